//! Raw async-nats peers: what NATS itself costs the cluster backend, in a few lines of async-nats
//! and no framework, on the same server. The responder is the bench binary itself, started again
//! with [`RESPONDER_ROLE`] naming the server; it answers three ways at once:
//!
//! - JetStream, one at a time: a pull of one message from the stream `BENCH_ONE` (durable
//!   consumer `one`, explicit acks), a reply to the caller's inbox named in the message's
//!   [`REPLY`] header, then the ack; then the next pull. The caller publishes (and awaits the
//!   server's ack of the publish) and waits for the reply: the cluster's round trip stripped to
//!   its messages.
//! - JetStream in batches: the same from `BENCH_BATCH` (consumer `batch`), pulled 100 at a time,
//!   while the caller publishes every message first.
//! - Core request/reply on the subject `bench.core`: no stream, no ack.
//!
//! The responder exits when its stdin closes, so it never outlives the bench.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{pull, AckPolicy, PullConsumer};
use async_nats::jetstream::{self, stream};
use async_nats::{Client, HeaderMap, Subscriber};
use bytes::Bytes;
use futures_util::StreamExt;

/// Makes the bench binary, started again with it (the server's URL), a raw NATS responder.
const RESPONDER_ROLE: &str = "PARALLEL_BENCH_NATS";
/// The header that names the caller's inbox in a JetStream message.
const REPLY: &str = "Bench-Reply";
/// Messages per pull of the batched peer.
pub(crate) const BATCH: usize = 100;
const CORE_SUBJECT: &str = "bench.core";
/// A pull waits this long on the server for messages before it is renewed.
const PULL_EXPIRY: Duration = Duration::from_secs(5);

/// One of the two JetStream queues: its stream, subject, consumer and pull size.
struct Queue {
    stream: &'static str,
    subject: &'static str,
    consumer: &'static str,
    pull: usize,
}

const ONE: Queue = Queue { stream: "BENCH_ONE", subject: "bench.one", consumer: "one", pull: 1 };
const BATCHED: Queue =
    Queue { stream: "BENCH_BATCH", subject: "bench.batch", consumer: "batch", pull: BATCH };

/// A runtime like the cluster caller's: one worker thread for the client's connection, the
/// caller's thread blocking on its futures.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("start a tokio runtime")
}

/// The stream and durable pull consumer of `queue`, made by whoever comes first; both are
/// what the cluster's are: a work queue on the file store, explicit acks.
async fn consumer(jetstream: &jetstream::Context, queue: &Queue) -> PullConsumer {
    let stream = jetstream
        .get_or_create_stream(stream::Config {
            name: queue.stream.to_owned(),
            subjects: vec![queue.subject.to_owned()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .expect("create a bench stream");
    stream
        .get_or_create_consumer(
            queue.consumer,
            pull::Config {
                durable_name: Some(queue.consumer.to_owned()),
                ack_policy: AckPolicy::Explicit,
                ..Default::default()
            },
        )
        .await
        .expect("create a bench consumer")
}

/// Answers as a raw responder until end of input if this process was started as one, and
/// returns whether it was: call it early in `main` and return when it says `true`.
pub(crate) fn serve_if_responder() -> bool {
    let Some(url) = std::env::var_os(RESPONDER_ROLE) else {
        return false;
    };
    let url = url.into_string().expect("the server's URL is UTF-8");
    // The bench holds our stdin: its end (even a crash) is ours.
    std::thread::spawn(|| {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        std::process::exit(0);
    });
    runtime().block_on(async {
        let client = async_nats::connect(&url).await.expect("the responder connects");
        let jetstream = jetstream::new(client.clone());
        let mut requests = client.subscribe(CORE_SUBJECT).await.expect("subscribe");
        let one = consumer(&jetstream, &ONE).await;
        let batched = consumer(&jetstream, &BATCHED).await;
        client.flush().await.expect("flush");
        tokio::spawn(pull_and_reply(client.clone(), one, ONE.pull));
        tokio::spawn(pull_and_reply(client.clone(), batched, BATCHED.pull));
        println!("ready");
        while let Some(request) = requests.next().await {
            if let Some(reply) = request.reply {
                client.publish(reply, request.payload).await.expect("reply");
            }
        }
    });
    true
}

/// Pulls `pull` messages at a time; replies to each, then acks it.
async fn pull_and_reply(client: Client, consumer: PullConsumer, pull: usize) {
    loop {
        let batch = consumer.batch().max_messages(pull).expires(PULL_EXPIRY).messages().await;
        let Ok(mut messages) = batch else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        while let Some(Ok(message)) = messages.next().await {
            let reply = message.headers.as_ref().and_then(|headers| headers.get(REPLY));
            if let Some(reply) = reply {
                let reply = reply.as_str().to_owned();
                client.publish(reply, message.payload.clone()).await.expect("reply");
            }
            message.ack().await.expect("ack");
        }
    }
}

/// The caller's side of the raw peers, with its responder process.
pub(crate) struct RawNats {
    runtime: tokio::runtime::Runtime,
    client: Client,
    jetstream: jetstream::Context,
    inbox: String,
    replies: Subscriber,
    responder: Child,
    /// Held open: the responder exits when it closes.
    _stdin: ChildStdin,
}

impl RawNats {
    /// Starts a responder on the server at `url` and connects to it.
    pub(crate) fn start(url: &str) -> RawNats {
        let runtime = runtime();
        let (client, jetstream, inbox, replies) = runtime.block_on(async {
            let client = async_nats::connect(url).await.expect("the bench connects");
            let jetstream = jetstream::new(client.clone());
            // Made before the responder pulls from them.
            consumer(&jetstream, &ONE).await;
            consumer(&jetstream, &BATCHED).await;
            let inbox = client.new_inbox();
            let replies = client.subscribe(inbox.clone()).await.expect("subscribe");
            client.flush().await.expect("flush");
            (client, jetstream, inbox, replies)
        });
        let mut responder = Command::new(std::env::current_exe().expect("the bench's own path"))
            .env(RESPONDER_ROLE, url)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the raw NATS responder");
        let stdin = responder.stdin.take().expect("piped stdin");
        let mut ready = String::new();
        BufReader::new(responder.stdout.take().expect("piped stdout"))
            .read_line(&mut ready)
            .expect("read from the responder");
        assert_eq!(ready.trim(), "ready", "the raw NATS responder did not start");
        RawNats { runtime, client, jetstream, inbox, replies, responder, _stdin: stdin }
    }

    fn headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(REPLY, self.inbox.as_str());
        headers
    }

    /// Seconds per JetStream round trip: publish (the server acks it), the responder pulls it,
    /// replies, acks; `count` of them one after the other.
    pub(crate) fn jetstream_round_trip(&mut self, count: usize) -> f64 {
        let headers = self.headers();
        let Self { runtime, jetstream, replies, .. } = self;
        runtime.block_on(async {
            let start = Instant::now();
            for i in 0..count as u64 {
                let payload = Bytes::copy_from_slice(&i.to_le_bytes());
                let ack = jetstream
                    .publish_with_headers(ONE.subject, headers.clone(), payload)
                    .await
                    .expect("publish");
                let reply = replies.next().await.expect("a reply");
                assert_eq!(reply.payload[..], i.to_le_bytes(), "the reply of this message");
                ack.await.expect("the server acks the publish");
            }
            start.elapsed().as_secs_f64() / count as f64
        })
    }

    /// Seconds per core request/reply round trip, `count` of them one after the other.
    pub(crate) fn request_round_trip(&mut self, count: usize) -> f64 {
        let Self { runtime, client, .. } = self;
        runtime.block_on(async {
            let start = Instant::now();
            for i in 0..count as u64 {
                let payload = Bytes::copy_from_slice(&i.to_le_bytes());
                let reply = client.request(CORE_SUBJECT, payload).await.expect("a reply");
                assert_eq!(reply.payload[..], i.to_le_bytes(), "the reply of this request");
            }
            start.elapsed().as_secs_f64() / count as f64
        })
    }

    /// Seconds per message of `count` published at once (each publish acked by the server),
    /// pulled in batches, each replied to and acked, until every reply is in.
    pub(crate) fn batched(&mut self, count: usize) -> f64 {
        let headers = self.headers();
        let Self { runtime, jetstream, replies, .. } = self;
        runtime.block_on(async {
            let start = Instant::now();
            let jetstream = jetstream.clone();
            // The acks are awaited as they come: the client lets only so many be pending
            // (5 000) before a publish waits for one.
            let (pending, mut acks) = tokio::sync::mpsc::unbounded_channel();
            let acked = tokio::spawn(async move {
                while let Some(ack) = acks.recv().await {
                    let ack: jetstream::context::PublishAckFuture = ack;
                    ack.await.expect("the server acks the publish");
                }
            });
            let published = tokio::spawn(async move {
                for i in 0..count as u64 {
                    let payload = Bytes::copy_from_slice(&i.to_le_bytes());
                    let ack = jetstream
                        .publish_with_headers(BATCHED.subject, headers.clone(), payload)
                        .await
                        .expect("publish");
                    pending.send(ack).expect("the ack awaiter waits");
                }
            });
            for _ in 0..count {
                replies.next().await.expect("a reply");
            }
            published.await.expect("the publisher finished");
            acked.await.expect("every publish was acked");
            start.elapsed().as_secs_f64() / count as f64
        })
    }
}

impl Drop for RawNats {
    fn drop(&mut self) {
        // Its stdin closes with us too; a kill makes sure.
        let _ = self.responder.kill();
        let _ = self.responder.wait();
        let _ = self.runtime.block_on(self.client.flush());
    }
}

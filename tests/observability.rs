//! What `parallel` traces: a span per task on both backends (task name, id, worker, outcome,
//! duration; the pid on the process backend), and events for worker processes that start, die
//! and are renewed. A subscriber of our own collects them.

mod common;

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex, OnceLock};

use common::quietly;
use parallel::{task, Backend, Pool};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

type Fields = BTreeMap<String, String>;

/// Collects the fields of every closed `parallel.task` span, and every event.
#[derive(Default, Clone)]
struct Collector {
    spans: Arc<Mutex<Vec<Fields>>>,
    events: Arc<Mutex<Vec<Fields>>>,
}

struct Visitor<'a>(&'a mut Fields);

impl Visit for Visitor<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}").trim_matches('"').to_owned());
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Collector {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = Fields::new();
        attrs.record(&mut Visitor(&mut fields));
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(fields);
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id)
            && let Some(fields) = span.extensions_mut().get_mut::<Fields>()
        {
            values.record(&mut Visitor(fields));
        }
    }

    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let mut fields = Fields::new();
        event.record(&mut Visitor(&mut fields));
        self.events.lock().unwrap().push(fields);
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(&id)
            && span.name() == "parallel.task"
            && let Some(fields) = span.extensions().get::<Fields>()
        {
            self.spans.lock().unwrap().push(fields.clone());
        }
    }
}

fn collector() -> &'static Collector {
    static COLLECTOR: OnceLock<Collector> = OnceLock::new();
    COLLECTOR.get_or_init(|| {
        let collector = Collector::default();
        let subscriber = tracing_subscriber::registry().with(collector.clone());
        tracing::subscriber::set_global_default(subscriber).expect("no other subscriber");
        collector
    })
}

#[task]
fn traced(kind: u8) -> Result<u8, String> {
    match kind {
        0 => Ok(0),
        1 => Err("refused".to_owned()),
        2 => panic!("traced panic"),
        _ => std::process::abort(),
    }
}

/// Panics at every attempt: three spans, attempts 1 to 3, on each backend.
#[task(retries = 2, backoff = "1ms")]
fn traced_retried(backend: String) -> u8 {
    panic!("attempt on {backend}")
}

fn spans_of(task_id_prefix: &str) -> Vec<Fields> {
    let spans = collector().spans.lock().unwrap();
    spans
        .iter()
        .filter(|span| span.get("task").is_some_and(|task| task.ends_with(task_id_prefix)))
        .cloned()
        .collect()
}

fn outcomes(backend: &str) -> Vec<String> {
    let mut outcomes: Vec<String> = spans_of("observability::traced")
        .into_iter()
        .filter(|span| span.get("backend").map(String::as_str) == Some(backend))
        .map(|span| span["outcome"].clone())
        .collect();
    outcomes.sort();
    outcomes
}

/// Each attempt of a retried task is a span of its own, numbered.
fn attempts_are_spans(backend: Backend, name: &str) {
    let pool = Pool::builder().backend(backend).workers(1).build().unwrap();
    let _ = traced_retried::dispatch_on(&pool, name.to_owned()).join();
    pool.shutdown();
    let mut attempts: Vec<String> = spans_of("observability::traced_retried")
        .into_iter()
        .filter(|span| span["backend"] == name)
        .map(|span| span["attempt"].clone())
        .collect();
    attempts.sort();
    assert_eq!(attempts, ["1", "2", "3"], "{name}");
}

#[test]
fn every_task_is_a_span_with_its_outcome_on_both_backends() {
    quietly(module_path!(), "every_task_is_a_span_with_its_outcome_on_both_backends", || {
        collector();
        let pool = Pool::builder().backend(Backend::Thread).workers(1).build().unwrap();
        for kind in 0..3 {
            let _ = traced::dispatch_on(&pool, kind).join();
        }
        drop(pool);
        assert_eq!(outcomes("thread"), ["failed", "ok", "panicked"]);
        let span = spans_of("observability::traced")
            .into_iter()
            .find(|span| span["backend"] == "thread")
            .unwrap();
        assert_eq!(span["worker"], "0");
        assert_eq!(span["attempt"], "1");
        assert!(span["duration_us"].parse::<u64>().is_ok(), "{span:?}");
        assert!(span["id"].parse::<u64>().is_ok(), "{span:?}");
        attempts_are_spans(Backend::Thread, "thread");

        #[cfg(feature = "process")]
        {
            let pool = Pool::builder().backend(Backend::Process).workers(1).build().unwrap();
            for kind in 0..4 {
                let _ = traced::dispatch_on(&pool, kind).join();
            }
            pool.shutdown();
            assert_eq!(outcomes("process"), ["failed", "ok", "panicked", "worker died"]);
            attempts_are_spans(Backend::Process, "process");
            let spans = spans_of("observability::traced");
            let pids: Vec<&String> = spans
                .iter()
                .filter(|span| span["backend"] == "process")
                .map(|span| &span["pid"])
                .collect();
            assert!(pids
                .iter()
                .all(|pid| pid.parse::<u32>().is_ok_and(|pid| pid != std::process::id())));
            let events = collector().events.lock().unwrap();
            let messages: Vec<&str> = events
                .iter()
                .filter_map(|event| event.get("message"))
                .map(String::as_str)
                .collect();
            assert!(messages.contains(&"worker process started"), "{messages:?}");
            let died = events.iter().find(|event| {
                event.get("message").map(String::as_str) == Some("worker process died")
            });
            let died = died.expect("the abort was traced");
            assert!(died["reason"].contains("SIGABRT"), "{died:?}");
        }
    });
}

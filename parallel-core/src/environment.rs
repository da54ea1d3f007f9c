//! The per-worker [`Environment`]: a typed key/value store that lives in one worker, persists
//! across the tasks that worker runs, and forgets values whose time to live has run out.
//!
//! This module owns the TTL semantics (DESIGN §3, after amphp's `BasicEnvironment`) and the
//! bookkeeping that lets the backends purge expired values cheaply: before each task and, while a
//! worker idles, whenever [`Environment::next_expiry`] says something may be due.

use std::any::Any;
use std::cell::Cell;
use std::collections::HashMap;
use std::fmt;
#[cfg(test)]
use std::rc::Rc;
use std::time::{Duration, Instant};

/// The longest TTL an entry keeps; longer ones are shortened to it so that `now + ttl` always
/// fits in an [`Instant`] (whose range is platform-specific) instead of panicking on overflow.
/// A century is "never" for a worker process.
const LONGEST_TTL: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// A per-worker store of values of any `'static` type, by `String` key, with optional expiry.
///
/// Each worker owns one `Environment`; it lives as long as the worker and is handed to every task
/// the worker runs, so a task can keep what is expensive to build (a connection, a parsed
/// configuration, a cache) for the tasks that come after it on the same worker. Values are never
/// serialized and need not be `Send`.
///
/// A value stored with [`set_with_ttl`](Self::set_with_ttl) expires when it has not been read
/// through [`get`](Self::get) or [`get_mut`](Self::get_mut) for its TTL. An expired value is never
/// observable through any method, and the worker drops it (its `Drop` runs) no later than before
/// its next task, and within about a second while it idles.
///
/// # Examples
///
/// Keep a connection-like value for the tasks that follow, and let it go once the worker has not
/// needed it for a minute:
///
/// ```
/// use std::time::Duration;
/// use parallel::Environment;
///
/// struct Connection {
///     queries: u32,
/// }
///
/// impl Connection {
///     fn open() -> Self {
///         Connection { queries: 0 }
///     }
///
///     fn query(&mut self, sql: &str) -> String {
///         self.queries += 1;
///         format!("result of {sql}")
///     }
/// }
///
/// fn connection(env: &mut Environment) -> &mut Connection {
///     // `get` slides the expiry forward, so the `get_mut` below finds the value unless a whole
///     // minute passes in between.
///     if env.get::<Connection>("db").is_none() {
///         env.set_with_ttl("db", Connection::open(), Duration::from_secs(60));
///     }
///     env.get_mut::<Connection>("db").expect("stored or refreshed just above")
/// }
///
/// let mut env = Environment::new();
/// assert_eq!(connection(&mut env).query("select 1"), "result of select 1");
/// connection(&mut env).query("select 2");
/// // Both queries went through the same connection.
/// assert_eq!(connection(&mut env).queries, 2);
///
/// // `Debug` shows the keys and the worker, not the values.
/// assert_eq!(format!("{env:?}"), r#"Environment { worker_id: 0, keys: ["db"], .. }"#);
/// ```
#[derive(Default)]
pub struct Environment {
    entries: HashMap<String, Entry>,
    schedule: Schedule,
    worker_id: usize,
    clock: Clock,
}

impl Environment {
    /// Creates an empty environment for worker 0.
    ///
    /// Workers get theirs from the pool; this one is for running or testing a task by hand.
    ///
    /// # Examples
    ///
    /// ```
    /// use parallel::Environment;
    ///
    /// let env = Environment::new();
    /// assert!(env.is_empty());
    /// assert_eq!(env.worker_id(), 0);
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// Creates the empty environment of worker `worker_id`.
    pub(crate) fn for_worker(worker_id: usize) -> Self {
        Environment { worker_id, ..Self::default() }
    }

    /// Creates an environment that reads the time from `clock`, so tests can move time by hand.
    #[cfg(test)]
    pub(crate) fn with_clock(worker_id: usize, clock: Rc<dyn Fn() -> Instant>) -> Self {
        Environment { worker_id, clock: Clock { manual: Some(clock) }, ..Self::default() }
    }

    /// Returns the id of the worker that owns this environment, from 0 to the pool's worker
    /// count minus one.
    ///
    /// # Examples
    ///
    /// ```
    /// use parallel::Environment;
    ///
    /// assert_eq!(Environment::new().worker_id(), 0);
    /// ```
    pub fn worker_id(&self) -> usize {
        self.worker_id
    }

    /// Returns whether `key` holds an unexpired value, of any type.
    ///
    /// Unlike [`get`](Self::get), this does not slide the value's expiry.
    ///
    /// # Examples
    ///
    /// ```
    /// use parallel::Environment;
    ///
    /// let mut env = Environment::new();
    /// assert!(!env.exists("answer"));
    /// env.set("answer", 42);
    /// assert!(env.exists("answer"));
    /// ```
    pub fn exists(&self, key: &str) -> bool {
        self.entries.get(key).is_some_and(|entry| !entry.is_expired(&self.clock))
    }

    /// Returns a reference to the value of `key`, or `None` if there is none, it has expired, or
    /// it is not a `T`.
    ///
    /// A successful read slides the value's expiry: it now expires one TTL from now.
    ///
    /// # Examples
    ///
    /// ```
    /// use parallel::Environment;
    ///
    /// let mut env = Environment::new();
    /// env.set("answer", 42_u64);
    /// assert_eq!(env.get::<u64>("answer"), Some(&42));
    /// // Another type, or a missing key, reads as nothing.
    /// assert_eq!(env.get::<u32>("answer"), None);
    /// assert_eq!(env.get::<u64>("question"), None);
    /// ```
    pub fn get<T: 'static>(&self, key: &str) -> Option<&T> {
        let entry = self.entries.get(key)?;
        let value = entry.value.downcast_ref::<T>()?;
        entry.try_slide(&self.clock).then_some(value)
    }

    /// Returns a mutable reference to the value of `key`, or `None` if there is none, it has
    /// expired, or it is not a `T`.
    ///
    /// A successful read slides the value's expiry: it now expires one TTL from now.
    ///
    /// # Examples
    ///
    /// ```
    /// use parallel::Environment;
    ///
    /// let mut env = Environment::new();
    /// env.set("seen", Vec::<String>::new());
    /// if let Some(seen) = env.get_mut::<Vec<String>>("seen") {
    ///     seen.push("first".to_owned());
    /// }
    /// assert_eq!(env.get::<Vec<String>>("seen").map(Vec::len), Some(1));
    /// ```
    pub fn get_mut<T: 'static>(&mut self, key: &str) -> Option<&mut T> {
        // An expired value is left for the next purge to drop, which saves a second lookup here.
        let entry = self.entries.get_mut(key)?;
        // The type is checked first so that only a successful read slides the expiry.
        if !entry.value.is::<T>() || !entry.try_slide(&self.clock) {
            return None;
        }
        entry.value.downcast_mut()
    }

    /// Stores `value` under `key`, without expiry, replacing any value the key held (of any type).
    ///
    /// A key that had a TTL loses it: the new value never expires.
    ///
    /// # Examples
    ///
    /// ```
    /// use parallel::Environment;
    ///
    /// let mut env = Environment::new();
    /// env.set("greeting", "hello");
    /// env.set("greeting", String::from("hi"));
    /// assert_eq!(env.get::<String>("greeting").map(String::as_str), Some("hi"));
    /// assert_eq!(env.len(), 1);
    /// ```
    pub fn set<T: 'static>(&mut self, key: impl Into<String>, value: T) {
        let entry = Entry { value: Box::new(value), expiry: None };
        self.insert(key.into(), entry);
    }

    /// Stores `value` under `key` until it goes `ttl` without being read through
    /// [`get`](Self::get) or [`get_mut`](Self::get_mut), replacing any value the key held (of any
    /// type) and any TTL it had, shorter or longer.
    ///
    /// [`exists`](Self::exists) does not count as a read. A TTL longer than a century is
    /// shortened to a century.
    ///
    /// # Panics
    ///
    /// Panics if `ttl` is zero: the value would expire at once, which is always a mistake. Use
    /// [`set`](Self::set) for a value that never expires.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use parallel::Environment;
    ///
    /// let mut env = Environment::new();
    /// env.set_with_ttl("token", String::from("abc"), Duration::from_secs(300));
    /// // Each read keeps the token for another five minutes.
    /// assert_eq!(env.get::<String>("token").map(String::as_str), Some("abc"));
    /// ```
    pub fn set_with_ttl<T: 'static>(&mut self, key: impl Into<String>, value: T, ttl: Duration) {
        assert!(
            !ttl.is_zero(),
            "a zero TTL would expire the value at once; use `Environment::set` for a value that \
             never expires"
        );
        let entry =
            Entry { value: Box::new(value), expiry: Some(Expiry::new(ttl, self.clock.now())) };
        self.insert(key.into(), entry);
    }

    /// Removes the value of `key`, returning whether there was an unexpired one.
    ///
    /// # Examples
    ///
    /// ```
    /// use parallel::Environment;
    ///
    /// let mut env = Environment::new();
    /// env.set("answer", 42);
    /// assert!(env.delete("answer"));
    /// assert!(!env.delete("answer"));
    /// assert!(!env.exists("answer"));
    /// ```
    pub fn delete(&mut self, key: &str) -> bool {
        match self.remove(key) {
            Some(entry) => !entry.is_expired(&self.clock),
            None => false,
        }
    }

    /// Removes every value.
    ///
    /// # Examples
    ///
    /// ```
    /// use parallel::Environment;
    ///
    /// let mut env = Environment::new();
    /// env.set("a", 1);
    /// env.set("b", 2);
    /// env.clear();
    /// assert!(env.is_empty());
    /// ```
    pub fn clear(&mut self) {
        // Bookkeeping first, so that a panicking `Drop` leaves it consistent.
        self.schedule = Schedule::default();
        self.entries.clear();
    }

    /// Returns the `T` stored under `key`, first storing `f()` there, without expiry, if the key
    /// holds no unexpired `T`.
    ///
    /// An unexpired `T` that is found has its expiry slid forward, as by [`get`](Self::get). A
    /// value of another type under `key` is replaced (and dropped), as is an expired one.
    ///
    /// # Examples
    ///
    /// Count the tasks this worker has run:
    ///
    /// ```
    /// use parallel::Environment;
    ///
    /// let mut env = Environment::new();
    /// for _ in 0..3 {
    ///     *env.get_or_insert_with("runs", || 0_u32) += 1;
    /// }
    /// assert_eq!(env.get::<u32>("runs"), Some(&3));
    ///
    /// // A value of another type is replaced.
    /// env.set("name", 7_i64);
    /// assert_eq!(env.get_or_insert_with("name", || "worker"), &"worker");
    /// ```
    pub fn get_or_insert_with<T: 'static>(
        &mut self,
        key: impl AsRef<str>,
        f: impl FnOnce() -> T,
    ) -> &mut T {
        self.get_or_insert_entry(key.as_ref(), None, f)
    }

    /// Returns the `T` stored under `key`, first storing `f()` there with a time to live of `ttl`
    /// (as [`set_with_ttl`](Self::set_with_ttl) does) if the key holds no unexpired `T`.
    ///
    /// An unexpired `T` that is found is returned as [`get_or_insert_with`](Self::get_or_insert_with)
    /// returns it: its expiry slides forward by the TTL it was stored with, and `ttl` is not
    /// applied to it (nor is a TTL removed from a value stored without one). A value of another
    /// type under `key` is replaced (and dropped), as is an expired one. A TTL longer than a
    /// century is shortened to a century.
    ///
    /// # Panics
    ///
    /// Panics if `ttl` is zero, whether or not a value is found, as
    /// [`set_with_ttl`](Self::set_with_ttl) does.
    ///
    /// # Examples
    ///
    /// Keep an expensive value (here a parsed table standing in for a compiled regex or a client)
    /// for the tasks that follow on this worker, and let it go once no task has used it for ten
    /// minutes:
    ///
    /// ```
    /// use std::time::Duration;
    /// use parallel::Environment;
    ///
    /// fn table(env: &mut Environment) -> &mut Vec<u32> {
    ///     env.get_or_insert_with_ttl("table", Duration::from_secs(600), || {
    ///         "3 1 2".split(' ').map(|n| n.parse().unwrap()).collect()
    ///     })
    /// }
    ///
    /// let mut env = Environment::new();
    /// table(&mut env).sort();
    /// // The second call finds the sorted table: nothing was built again.
    /// assert_eq!(table(&mut env), &[1, 2, 3]);
    /// ```
    pub fn get_or_insert_with_ttl<T: 'static>(
        &mut self,
        key: impl AsRef<str>,
        ttl: Duration,
        f: impl FnOnce() -> T,
    ) -> &mut T {
        assert!(
            !ttl.is_zero(),
            "a zero TTL would expire the value at once; use `Environment::get_or_insert_with` for \
             a value that never expires"
        );
        self.get_or_insert_entry(key.as_ref(), Some(ttl), f)
    }

    /// The `T` under `key`, slid as by a read, or `f()` stored there with `ttl`, if any.
    fn get_or_insert_entry<T: 'static>(
        &mut self,
        key: &str,
        ttl: Option<Duration>,
        f: impl FnOnce() -> T,
    ) -> &mut T {
        self.purge_expired();
        // The type is checked first so that only a `T` has its expiry slid. Looking the key up
        // again below costs a hash; allocating an owned key on every hit would cost more.
        let is_hit = self
            .entries
            .get(key)
            .is_some_and(|entry| entry.value.is::<T>() && entry.try_slide(&self.clock));
        if !is_hit {
            let value = Box::new(f());
            // The time is read after `f` ran: building the value may take a while.
            let expiry = ttl.map(|ttl| Expiry::new(ttl, self.clock.now()));
            self.insert(key.to_owned(), Entry { value, expiry });
        }
        self.entries
            .get_mut(key)
            .and_then(|entry| entry.value.downcast_mut())
            .expect("the entry holds a `T`: it was just checked or just stored")
    }

    /// Returns the number of unexpired values.
    ///
    /// # Examples
    ///
    /// ```
    /// use parallel::Environment;
    ///
    /// let mut env = Environment::new();
    /// env.set("a", 1);
    /// env.set("b", "two");
    /// assert_eq!(env.len(), 2);
    /// ```
    pub fn len(&self) -> usize {
        if self.schedule.with_ttl == 0 {
            return self.entries.len();
        }
        let now = self.clock.now();
        if !self.schedule.may_have_expired(now) {
            return self.entries.len();
        }
        self.entries
            .values()
            .filter(|entry| !entry.expiry.as_ref().is_some_and(|e| e.is_due(now)))
            .count()
    }

    /// Returns whether there is no unexpired value.
    ///
    /// # Examples
    ///
    /// ```
    /// use parallel::Environment;
    ///
    /// let mut env = Environment::new();
    /// assert!(env.is_empty());
    /// env.set("a", 1);
    /// assert!(!env.is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops every expired value.
    ///
    /// O(1) when no value can have expired yet (in particular when no value has a TTL); otherwise
    /// one pass over the entries, which also makes [`next_expiry`](Self::next_expiry) exact again.
    pub(crate) fn purge_expired(&mut self) {
        if self.schedule.with_ttl == 0 {
            return;
        }
        let now = self.clock.now();
        if !self.schedule.may_have_expired(now) {
            return;
        }
        let mut schedule = Schedule::default();
        let mut expired = Vec::new();
        self.entries.retain(|_, entry| match &entry.expiry {
            None => true,
            Some(expiry) if expiry.is_due(now) => {
                // Keep the value to drop it once the bookkeeping is right, so that a panicking
                // `Drop` cannot leave it wrong. `Box::new(())` does not allocate.
                expired.push(std::mem::replace(&mut entry.value, Box::new(())));
                false
            }
            Some(expiry) => {
                schedule.add(expiry.deadline.get());
                true
            }
        });
        self.schedule = schedule;
        drop(expired);
    }

    /// Returns the earliest time at which some value may expire, or `None` if no value has a TTL.
    ///
    /// It may be earlier than the real earliest expiry (reads slide expiries later without
    /// updating it), never later; [`purge_expired`](Self::purge_expired) makes it exact again.
    pub(crate) fn next_expiry(&self) -> Option<Instant> {
        self.schedule.earliest
    }

    /// Stores `entry` under `key`, keeping the bookkeeping right; the old value, if any, is dropped.
    fn insert(&mut self, key: String, entry: Entry) {
        self.purge_expired();
        if let Some(expiry) = &entry.expiry {
            self.schedule.add(expiry.deadline.get());
        }
        if let Some(old) = self.entries.insert(key, entry) {
            self.schedule.forget(&old);
        }
    }

    /// Removes the entry of `key`, expired or not, keeping the bookkeeping right.
    fn remove(&mut self, key: &str) -> Option<Entry> {
        let entry = self.entries.remove(key)?;
        self.schedule.forget(&entry);
        Some(entry)
    }
}

impl fmt::Debug for Environment {
    /// Shows the worker id and the keys of the unexpired values, sorted; values are opaque.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut keys: Vec<&str> = self
            .entries
            .iter()
            .filter(|(_, entry)| !entry.is_expired(&self.clock))
            .map(|(key, _)| key.as_str())
            .collect();
        keys.sort_unstable();
        f.debug_struct("Environment")
            .field("worker_id", &self.worker_id)
            .field("keys", &keys)
            .finish_non_exhaustive()
    }
}

/// One stored value and, if it has a TTL, when it expires.
struct Entry {
    value: Box<dyn Any>,
    expiry: Option<Expiry>,
}

impl Entry {
    fn is_expired(&self, clock: &Clock) -> bool {
        // Only a value with a TTL needs the time.
        self.expiry.as_ref().is_some_and(|expiry| expiry.is_due(clock.now()))
    }

    /// What a read does: if the entry is unexpired, slides its expiry (if any) and returns true.
    fn try_slide(&self, clock: &Clock) -> bool {
        self.expiry.as_ref().is_none_or(|expiry| expiry.try_slide(clock.now()))
    }
}

/// When a value with a TTL expires. The deadline is a `Cell` because a read through
/// [`Environment::get`], which takes `&self`, slides it.
struct Expiry {
    ttl: Duration,
    deadline: Cell<Instant>,
}

impl Expiry {
    fn new(ttl: Duration, now: Instant) -> Self {
        let ttl = ttl.min(LONGEST_TTL);
        Expiry { ttl, deadline: Cell::new(now + ttl) }
    }

    /// A value is expired from its deadline on.
    fn is_due(&self, now: Instant) -> bool {
        self.deadline.get() <= now
    }

    /// If the value is unexpired at `now`, moves its deadline to one TTL from `now` and returns
    /// true.
    fn try_slide(&self, now: Instant) -> bool {
        if self.is_due(now) {
            return false;
        }
        self.deadline.set(now + self.ttl);
        true
    }
}

/// What the environment knows about its deadlines without looking at every entry, so that
/// purging, counting and [`Environment::next_expiry`] are O(1) in the common cases.
///
/// Invariant: `with_ttl` is the number of entries that have an [`Expiry`]; `earliest` is `None`
/// when it is 0, and otherwise no later than any of their deadlines. Sliding only moves deadlines
/// later, so reads through `&self` keep it true without touching it.
#[derive(Default)]
struct Schedule {
    with_ttl: usize,
    earliest: Option<Instant>,
}

impl Schedule {
    /// Accounts for a new entry that expires at `deadline`.
    fn add(&mut self, deadline: Instant) {
        self.with_ttl += 1;
        self.earliest = Some(self.earliest.map_or(deadline, |earliest| earliest.min(deadline)));
    }

    /// Accounts for an entry that is going away.
    fn forget(&mut self, entry: &Entry) {
        if entry.expiry.is_some() {
            self.with_ttl -= 1;
            if self.with_ttl == 0 {
                self.earliest = None;
            }
        }
    }

    /// Whether some entry may have expired by `now`.
    fn may_have_expired(&self, now: Instant) -> bool {
        self.earliest.is_some_and(|earliest| earliest <= now)
    }
}

/// Where an environment reads the time: [`Instant::now`], or in tests a clock moved by hand.
///
/// Outside tests it is empty, so reading it costs exactly an [`Instant::now`].
#[derive(Default)]
struct Clock {
    #[cfg(test)]
    manual: Option<Rc<dyn Fn() -> Instant>>,
}

impl Clock {
    fn now(&self) -> Instant {
        #[cfg(test)]
        if let Some(manual) = &self.manual {
            return manual();
        }
        Instant::now()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A clock that moves only when the test says so.
    #[derive(Clone)]
    struct ManualClock(Rc<Cell<Instant>>);

    impl ManualClock {
        fn advance(&self, by: Duration) {
            self.0.set(self.0.get() + by);
        }

        fn now(&self) -> Instant {
            self.0.get()
        }
    }

    fn env_with_clock() -> (Environment, ManualClock) {
        let clock = ManualClock(Rc::new(Cell::new(Instant::now())));
        let reading = clock.clone();
        let env = Environment::with_clock(3, Rc::new(move || reading.now()));
        (env, clock)
    }

    const fn secs(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    /// A value that counts how many times it has been dropped.
    struct Tracked(Rc<Cell<usize>>);

    impl Drop for Tracked {
        fn drop(&mut self) {
            self.0.set(self.0.get() + 1);
        }
    }

    fn drop_counter() -> Rc<Cell<usize>> {
        Rc::new(Cell::new(0))
    }

    #[test]
    fn set_get_exists_delete_clear_len() {
        let mut env = Environment::for_worker(5);
        assert_eq!(env.worker_id(), 5);
        assert!(env.is_empty());

        env.set("a", 1_u32);
        env.set(String::from("b"), "two");
        assert_eq!(env.len(), 2);
        assert!(env.exists("a"));
        assert!(!env.exists("c"));
        assert_eq!(env.get::<u32>("a"), Some(&1));
        assert_eq!(env.get::<&str>("b"), Some(&"two"));

        *env.get_mut::<u32>("a").unwrap() += 10;
        assert_eq!(env.get::<u32>("a"), Some(&11));

        assert!(env.delete("a"));
        assert!(!env.delete("a"));
        assert!(!env.exists("a"));
        assert_eq!(env.get::<u32>("a"), None);
        assert_eq!(env.len(), 1);

        env.clear();
        assert!(env.is_empty());
        assert!(!env.exists("b"));
    }

    #[test]
    fn a_read_with_the_wrong_type_is_none_and_keeps_the_value() {
        let mut env = Environment::new();
        env.set("n", 7_u64);
        assert_eq!(env.get::<u32>("n"), None);
        assert_eq!(env.get_mut::<i64>("n"), None);
        assert_eq!(env.get::<u64>("n"), Some(&7));
    }

    #[test]
    fn get_and_get_mut_slide_the_expiry_but_exists_does_not() {
        let (mut env, clock) = env_with_clock();
        env.set_with_ttl("read", 1_u8, secs(10));
        env.set_with_ttl("read_mut", 2_u8, secs(10));
        env.set_with_ttl("checked", 3_u8, secs(10));

        clock.advance(secs(8));
        assert_eq!(env.get::<u8>("read"), Some(&1));
        assert_eq!(env.get_mut::<u8>("read_mut"), Some(&mut 2));
        assert!(env.exists("checked"));

        // 12 s after they were set, 4 s after the reads.
        clock.advance(secs(4));
        assert!(env.exists("read"));
        assert!(env.exists("read_mut"));
        assert!(!env.exists("checked"));

        // 10 s after the reads, exactly: from its deadline on, a value is expired.
        clock.advance(secs(6));
        assert!(!env.exists("read"));
        assert!(!env.exists("read_mut"));
    }

    #[test]
    fn a_read_with_the_wrong_type_does_not_slide_the_expiry() {
        let (mut env, clock) = env_with_clock();
        env.set_with_ttl("n", 1_u8, secs(10));
        clock.advance(secs(8));
        assert_eq!(env.get::<u16>("n"), None);
        assert_eq!(env.get_mut::<u16>("n"), None);
        clock.advance(secs(2));
        assert!(!env.exists("n"));
    }

    #[test]
    fn set_without_ttl_removes_an_old_ttl() {
        let (mut env, clock) = env_with_clock();
        env.set_with_ttl("k", 1_u8, secs(10));
        env.set("k", 2_u8);
        assert_eq!(env.next_expiry(), None);
        clock.advance(secs(1000));
        env.purge_expired();
        assert_eq!(env.get::<u8>("k"), Some(&2));
    }

    #[test]
    fn set_with_ttl_replaces_a_longer_ttl_with_a_shorter_one() {
        let (mut env, clock) = env_with_clock();
        env.set_with_ttl("k", 1_u8, secs(100));
        env.set_with_ttl("k", 2_u8, secs(10));
        clock.advance(secs(9));
        assert!(env.exists("k"));
        clock.advance(secs(1));
        assert!(!env.exists("k"));
        assert_eq!(env.get::<u8>("k"), None);
    }

    #[test]
    fn set_with_ttl_replaces_a_shorter_ttl_with_a_longer_one() {
        let (mut env, clock) = env_with_clock();
        env.set_with_ttl("k", 1_u8, secs(10));
        env.set_with_ttl("k", 2_u8, secs(100));
        clock.advance(secs(50));
        env.purge_expired();
        assert_eq!(env.get::<u8>("k"), Some(&2));
        // The read slid it by the new TTL, not the old one.
        clock.advance(secs(99));
        assert!(env.exists("k"));
    }

    #[test]
    #[should_panic(expected = "use `Environment::set` for a value that never expires")]
    fn a_zero_ttl_panics() {
        Environment::new().set_with_ttl("k", 1_u8, Duration::ZERO);
    }

    #[test]
    fn a_ttl_too_long_for_an_instant_is_shortened_not_a_panic() {
        let (mut env, clock) = env_with_clock();
        env.set_with_ttl("k", 1_u8, Duration::MAX);
        clock.advance(secs(365 * 24 * 60 * 60));
        assert_eq!(env.get::<u8>("k"), Some(&1));
    }

    #[test]
    fn an_expired_value_is_invisible_to_every_method() {
        let (mut env, clock) = env_with_clock();
        for key in ["exists", "get", "get_mut", "delete", "insert", "debug"] {
            env.set_with_ttl(key, 1_u32, secs(10));
        }
        env.set("forever", 0_u32);
        clock.advance(secs(10));

        assert!(!env.exists("exists"));
        assert_eq!(env.get::<u32>("get"), None);
        assert_eq!(env.get_mut::<u32>("get_mut"), None);
        assert_eq!(env.len(), 1);
        assert!(!env.is_empty());
        assert!(!env.delete("delete"));
        assert_eq!(format!("{env:?}"), r#"Environment { worker_id: 3, keys: ["forever"], .. }"#);
        assert_eq!(*env.get_or_insert_with("insert", || 2_u32), 2);
        // The fresh value has no TTL.
        clock.advance(secs(1000));
        assert_eq!(env.get::<u32>("insert"), Some(&2));
        assert_eq!(env.len(), 2);
    }

    #[test]
    fn len_counts_only_unexpired_values() {
        let (mut env, clock) = env_with_clock();
        env.set("forever", 0_u8);
        env.set_with_ttl("short", 1_u8, secs(10));
        env.set_with_ttl("long", 2_u8, secs(20));
        assert_eq!(env.len(), 3);
        clock.advance(secs(10));
        assert_eq!(env.len(), 2);
        clock.advance(secs(10));
        assert_eq!(env.len(), 1);
    }

    #[test]
    fn purge_drops_each_expired_value_exactly_once_and_keeps_the_rest() {
        let (mut env, clock) = env_with_clock();
        let expired = drop_counter();
        let live = drop_counter();
        let forever = drop_counter();
        env.set_with_ttl("a", Tracked(expired.clone()), secs(5));
        env.set_with_ttl("b", Tracked(expired.clone()), secs(10));
        env.set_with_ttl("c", Tracked(live.clone()), secs(11));
        env.set("d", Tracked(forever.clone()));

        clock.advance(secs(10));
        env.purge_expired();
        assert_eq!(expired.get(), 2);
        assert_eq!(live.get(), 0);
        assert_eq!(forever.get(), 0);

        env.purge_expired();
        assert_eq!(expired.get(), 2);
        assert!(env.exists("c"));
        assert!(env.exists("d"));

        drop(env);
        assert_eq!(expired.get(), 2);
        assert_eq!(live.get(), 1);
        assert_eq!(forever.get(), 1);
    }

    #[test]
    fn mutating_methods_drop_expired_values() {
        let (mut env, clock) = env_with_clock();
        let dropped = drop_counter();
        env.set_with_ttl("old", Tracked(dropped.clone()), secs(1));
        env.set_with_ttl("other", Tracked(dropped.clone()), secs(1));
        clock.advance(secs(1));

        env.set("new", 0_u8);
        assert_eq!(dropped.get(), 2);
        assert_eq!(env.next_expiry(), None);
        assert!(env.get_mut::<Tracked>("other").is_none());
    }

    #[test]
    fn replacing_or_deleting_a_value_drops_the_old_one_once() {
        let mut env = Environment::new();
        let dropped = drop_counter();
        env.set("k", Tracked(dropped.clone()));
        env.set("k", 1_u8);
        assert_eq!(dropped.get(), 1);
        env.set("k", Tracked(dropped.clone()));
        assert!(env.delete("k"));
        assert_eq!(dropped.get(), 2);
        env.set("k", Tracked(dropped.clone()));
        env.clear();
        assert_eq!(dropped.get(), 3);
    }

    #[test]
    fn next_expiry_is_none_without_ttls() {
        let (mut env, _clock) = env_with_clock();
        assert_eq!(env.next_expiry(), None);
        env.set("k", 1_u8);
        assert_eq!(env.next_expiry(), None);
        env.set_with_ttl("t", 1_u8, secs(10));
        assert!(env.next_expiry().is_some());
        assert!(env.delete("t"));
        assert_eq!(env.next_expiry(), None);
        env.set_with_ttl("t", 1_u8, secs(10));
        env.clear();
        assert_eq!(env.next_expiry(), None);
    }

    #[test]
    fn next_expiry_is_never_later_than_the_earliest_expiry() {
        let (mut env, clock) = env_with_clock();
        let start = clock.now();
        env.set_with_ttl("late", 1_u8, secs(30));
        assert_eq!(env.next_expiry(), Some(start + secs(30)));
        env.set_with_ttl("early", 2_u8, secs(10));
        assert_eq!(env.next_expiry(), Some(start + secs(10)));
        env.set_with_ttl("middle", 3_u8, secs(20));
        assert_eq!(env.next_expiry(), Some(start + secs(10)));

        // A read slides "early" to 19 s; the bound may stay early, but a purge makes it exact.
        clock.advance(secs(9));
        env.get::<u8>("early");
        assert!(env.next_expiry().unwrap() <= start + secs(19));
        clock.advance(secs(1));
        env.purge_expired();
        assert_eq!(env.next_expiry(), Some(start + secs(19)));

        // Replacing the earliest with a later one never pushes the bound past the others.
        env.set_with_ttl("early", 2_u8, secs(100));
        assert!(env.next_expiry().unwrap() <= start + secs(20));
    }

    #[test]
    fn purge_with_nothing_due_keeps_everything() {
        let (mut env, clock) = env_with_clock();
        let dropped = drop_counter();
        env.set_with_ttl("k", Tracked(dropped.clone()), secs(10));
        clock.advance(secs(9));
        env.purge_expired();
        assert_eq!(dropped.get(), 0);
        assert!(env.exists("k"));
    }

    #[test]
    fn get_or_insert_with_returns_a_live_value_and_slides_it() {
        let (mut env, clock) = env_with_clock();
        env.set_with_ttl("k", 1_u32, secs(10));
        clock.advance(secs(8));
        let value = env.get_or_insert_with::<u32>("k", || panic!("the value is there"));
        *value += 1;
        clock.advance(secs(8));
        assert_eq!(env.get::<u32>("k"), Some(&2));
    }

    #[test]
    fn get_or_insert_with_inserts_when_missing() {
        let mut env = Environment::new();
        assert_eq!(*env.get_or_insert_with("k", || 5_i32), 5);
        assert_eq!(*env.get_or_insert_with("k", || 6_i32), 5);
        assert_eq!(env.len(), 1);
    }

    #[test]
    fn get_or_insert_with_replaces_a_value_of_another_type() {
        let (mut env, clock) = env_with_clock();
        let dropped = drop_counter();
        env.set_with_ttl("k", Tracked(dropped.clone()), secs(10));
        assert_eq!(env.get_or_insert_with("k", || "new"), &"new");
        assert_eq!(dropped.get(), 1);
        assert_eq!(env.next_expiry(), None);
        clock.advance(secs(1000));
        assert_eq!(env.get::<&str>("k"), Some(&"new"));
    }

    #[test]
    fn get_or_insert_with_ttl_inserts_with_the_ttl_when_missing() {
        let (mut env, clock) = env_with_clock();
        let built = Cell::new(0);
        let build = || {
            built.set(built.get() + 1);
            7_u32
        };
        assert_eq!(*env.get_or_insert_with_ttl("k", secs(10), build), 7);
        assert_eq!(built.get(), 1);
        assert!(env.next_expiry().is_some());
        clock.advance(secs(9));
        assert!(env.exists("k"));
        clock.advance(secs(1));
        assert!(!env.exists("k"), "expired one TTL after it was stored, with no read");
        // Expired, so built again, with a fresh TTL.
        assert_eq!(*env.get_or_insert_with_ttl("k", secs(10), build), 7);
        assert_eq!(built.get(), 2);
        clock.advance(secs(9));
        assert!(env.exists("k"));
    }

    #[test]
    fn get_or_insert_with_ttl_returns_a_live_value_and_slides_it_by_its_own_ttl() {
        let (mut env, clock) = env_with_clock();
        env.set_with_ttl("k", 1_u32, secs(10));
        clock.advance(secs(8));
        *env.get_or_insert_with_ttl::<u32>("k", secs(100), || panic!("the value is there")) += 1;
        // Slid by its own 10 s, not by the 100 s asked for a new value.
        clock.advance(secs(9));
        assert_eq!(env.get::<u32>("k"), Some(&2));
        clock.advance(secs(10));
        assert!(!env.exists("k"));
    }

    #[test]
    fn get_or_insert_with_ttl_keeps_a_value_without_ttl_as_it_is() {
        let (mut env, clock) = env_with_clock();
        env.set("k", 1_u32);
        assert_eq!(*env.get_or_insert_with_ttl("k", secs(10), || 2_u32), 1);
        assert_eq!(env.next_expiry(), None);
        clock.advance(secs(1000));
        assert_eq!(env.get::<u32>("k"), Some(&1));
    }

    #[test]
    fn get_or_insert_with_ttl_replaces_a_value_of_another_type() {
        let (mut env, clock) = env_with_clock();
        let dropped = drop_counter();
        env.set("k", Tracked(dropped.clone()));
        assert_eq!(env.get_or_insert_with_ttl("k", secs(10), || "new"), &"new");
        assert_eq!(dropped.get(), 1);
        clock.advance(secs(10));
        assert!(!env.exists("k"), "the new value has the new TTL");
    }

    #[test]
    fn get_or_insert_with_ttl_reads_the_time_after_building_the_value() {
        let (mut env, clock) = env_with_clock();
        env.get_or_insert_with_ttl("k", secs(10), || clock.advance(secs(5)));
        clock.advance(secs(9));
        assert!(env.exists("k"), "the TTL runs from when the value was stored");
    }

    #[test]
    #[should_panic(
        expected = "use `Environment::get_or_insert_with` for a value that never expires"
    )]
    fn get_or_insert_with_ttl_panics_on_a_zero_ttl_even_on_a_hit() {
        let mut env = Environment::new();
        env.set("k", 1_u8);
        env.get_or_insert_with_ttl("k", Duration::ZERO, || 2_u8);
    }

    #[test]
    fn a_value_that_is_not_send_can_be_stored() {
        let mut env = Environment::new();
        let shared = Rc::new(Cell::new(1));
        env.set("rc", Rc::clone(&shared));
        env.get::<Rc<Cell<i32>>>("rc").unwrap().set(2);
        assert_eq!(shared.get(), 2);
    }
}

// One mistake is one error: when `#[task]` rejects a function, it still generates a stub of the
// module `visits`, so every caller of `visits::new`, `visits::dispatch` and `visits::dispatch_on`
// compiles, with the types they would have, and only the mistake is reported.
use parallel::{task, Environment, Pool};

#[task]
unsafe fn visits(env: &mut Environment, user: String) -> u64 {
    let n = env.get_or_insert_with(&user, || 0u64);
    *n += 1;
    *n
}

fn main() {
    let pool = Pool::builder().workers(1).build().unwrap();
    let first: u64 = visits::dispatch("ann".into()).join().unwrap();
    let second = visits::dispatch_on(&pool, "ann".to_owned()).join().unwrap();
    let third = pool.submit(visits::new("bob".to_owned())).join().unwrap();
    assert_eq!(first + second + third, 3);
    let task: visits::Task = visits::new(String::new());
    let _ = task;
}

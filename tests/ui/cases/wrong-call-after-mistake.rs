// The stub that `#[task]` generates beside a rejected function keeps the callers checked: a call
// with the wrong argument is reported at the call, in the same build as the mistake in the task.
use parallel::{task, Environment};

#[task]
unsafe fn visits(env: &mut Environment, user: String) -> u64 {
    let n = env.get_or_insert_with(&user, || 0u64);
    *n += 1;
    *n
}

fn main() {
    let _ = visits::dispatch(7).join();
}

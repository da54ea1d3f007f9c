// Every mistake is reported in one build, and the function itself is still there: `caller`
// compiles without a "cannot find function" error.
use parallel::{task, Environment};

#[task(nmae = "typo", name = 7)]
fn report<T: Copy>(title: &str, (x, y): (u32, u32), env: &mut Environment, tag: T) -> Vec<u32> {
    let _ = (title, env, tag);
    vec![x, y]
}

fn caller() -> Vec<u32> {
    report("title", (1, 2), &mut Environment::new(), 'c')
}

fn main() {
    caller();
}

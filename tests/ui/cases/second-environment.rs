use parallel::{task, Environment};

#[task]
fn visits(env: &mut Environment, user: String, other: &Environment) -> usize {
    let _ = (env, user);
    other.len()
}

fn main() {}

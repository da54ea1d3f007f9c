use parallel::{task, Environment};

#[task]
fn size(env: Environment) -> usize {
    env.len()
}

fn main() {}

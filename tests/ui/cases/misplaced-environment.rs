use parallel::{task, Environment};

#[task]
fn visits(user: String, env: &mut Environment) -> u64 {
    let n = env.get_or_insert_with(&user, || 0u64);
    *n += 1;
    *n
}

fn main() {}

use parallel::{task, Environment, Progress};

#[task]
fn crawl(progress: &Progress<String>, env: &mut Environment, other: &Progress<u32>) -> usize {
    let _ = (progress, env, other);
    0
}

fn main() {}

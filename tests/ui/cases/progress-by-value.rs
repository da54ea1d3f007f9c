use parallel::{task, Progress};

#[task]
fn crawl(progress: Progress<String>, root: String) -> usize {
    let _ = (progress, root);
    0
}

fn main() {}

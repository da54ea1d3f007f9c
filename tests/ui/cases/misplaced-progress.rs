use parallel::{task, Progress};

#[task]
fn crawl(root: String, progress: &Progress<String>) -> usize {
    progress.send(root);
    0
}

fn main() {}

use parallel::{task, Progress};

struct Page;

#[task]
fn crawl(progress: &Progress<Page>, root: String) -> usize {
    let _ = root;
    progress.send(Page);
    0
}

fn main() {}

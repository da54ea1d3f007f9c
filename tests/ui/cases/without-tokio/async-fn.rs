use parallel::task;

#[task]
async fn fetch(url: String) -> usize {
    url.len()
}

fn main() {}

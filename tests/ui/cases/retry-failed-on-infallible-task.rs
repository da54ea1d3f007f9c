use parallel::task;

#[task(retries = 3, retry_failed)]
fn double(x: u64) -> u64 {
    x * 2
}

fn main() {}

use parallel::task;

#[task(retries = 3, backoff = "5m")]
fn fetch(url: String) -> Result<String, String> {
    Ok(url)
}

fn main() {}

use parallel::task;

#[task(retry_failed)]
fn fetch(url: String) -> Result<String, String> {
    Ok(url)
}

fn main() {}

use parallel::task;

#[task(timeout = "2 seconds")]
fn fetch(url: String) -> Result<String, String> {
    Ok(url)
}

fn main() {}

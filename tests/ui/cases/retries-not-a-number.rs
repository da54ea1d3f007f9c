use parallel::task;

#[task(retries = "three")]
fn fetch(url: String) -> Result<String, String> {
    Ok(url)
}

fn main() {}

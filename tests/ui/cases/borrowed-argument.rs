use parallel::task;

#[derive(serde::Serialize, serde::Deserialize)]
struct Config {
    verbose: bool,
}

#[task]
fn greet(name: &str, bytes: &[u8], config: &mut Config) -> String {
    format!("{name} {} {}", bytes.len(), config.verbose)
}

fn main() {}

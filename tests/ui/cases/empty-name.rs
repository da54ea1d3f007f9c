use parallel::task;

#[task(name = "")]
fn charge(cents: u64) -> u64 {
    cents
}

fn main() {}

use parallel::task;

#[task(crate = 42)]
fn charge(cents: u64) -> u64 {
    cents
}

fn main() {}

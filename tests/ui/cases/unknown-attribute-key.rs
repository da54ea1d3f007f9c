use parallel::task;

#[task(nmae = "billing::charge")]
fn charge(cents: u64) -> u64 {
    cents
}

fn main() {}

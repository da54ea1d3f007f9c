use parallel::task;

#[task(name = "billing::charge", name = "billing::refund")]
fn charge(cents: u64) -> u64 {
    cents
}

fn main() {}

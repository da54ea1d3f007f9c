use parallel::task;

#[task(name = billing::charge)]
fn charge(cents: u64) -> u64 {
    cents
}

fn main() {}

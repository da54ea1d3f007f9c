use parallel::task;

#[task]
fn total(items: Vec<u32>) -> u32
where
    u32: Copy,
{
    items.into_iter().sum()
}

fn main() {}

use parallel::task;

#[task]
fn add((a, b): (i32, i32), _: i32) -> i32 {
    a + b
}

fn main() {}

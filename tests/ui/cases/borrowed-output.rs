use parallel::task;

#[task]
fn greeting(formal: bool) -> &'static str {
    if formal { "good day" } else { "hi" }
}

fn main() {}

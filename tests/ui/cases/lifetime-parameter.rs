use parallel::task;

#[task]
fn first<'a>(words: Vec<String>) -> String {
    words.into_iter().next().unwrap_or_default()
}

fn main() {}

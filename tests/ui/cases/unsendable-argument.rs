use std::rc::Rc;

use parallel::task;

#[task]
fn count(words: Rc<Vec<String>>) -> usize {
    words.len()
}

fn main() {}

// A `#[task]` function is a module item: inside a function body, the module generated beside it
// cannot reach it (nor the body's other items), so it must move out to the enclosing module.
use parallel::task;

fn main() {
    #[task]
    fn add(a: i64, b: i64) -> i64 {
        a + b
    }

    assert_eq!(add(1, 2), 3);
}

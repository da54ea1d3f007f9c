// A `#[task]` function in a block works, but its arguments travel in `NAME::Task`, a struct of the
// module `NAME`, which cannot see the block's own types: an argument type declared in the block
// must move out to the module.
use parallel::task;
use serde::{Deserialize, Serialize};

fn main() {
    #[derive(Serialize, Deserialize)]
    struct Point {
        x: i64,
    }

    #[task]
    fn norm(point: Point) -> i64 {
        point.x.abs()
    }

    assert_eq!(norm::dispatch(Point { x: -1 }).join().unwrap(), 1);
}

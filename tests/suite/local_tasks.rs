//! `#[task]` on a function declared in a block — a test's body, `main` — works as it does on a
//! module item: the generated `impl Task` stands beside the function, so nothing reaches it
//! through `super::`.

use parallel::{task, Backend, Environment, Task, TaskError};
use serde::{Deserialize, Serialize};

use crate::support::pool;

fn tasks_in_a_function_body_run(backend: Backend) {
    #[task]
    fn add(a: i64, b: i64) -> i64 {
        a + b
    }

    // The output and error types may be the block's own; the arguments' are the module's.
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Sum {
        total: u64,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum Refused {
        Empty,
    }

    #[task]
    fn sum(env: &mut Environment, values: Vec<u64>) -> Result<Sum, Refused> {
        *env.get_or_insert_with("calls", || 0_u32) += 1;
        match values.is_empty() {
            true => Err(Refused::Empty),
            false => Ok(Sum { total: values.iter().sum() }),
        }
    }

    let pool = pool(backend, 2);
    assert_eq!(add(1, 2), 3, "the function stays callable");
    assert_eq!(add::dispatch_on(&pool, 1, 2).join(), Ok(3));
    assert_eq!(sum::dispatch_on(&pool, vec![1, 2, 3]).join(), Ok(Sum { total: 6 }));
    assert_eq!(sum::dispatch_on(&pool, Vec::new()).join(), Err(TaskError::Failed(Refused::Empty)));
    let sums: Vec<_> = pool.map((0..4).map(|i| add::new(i, i))).collect();
    assert_eq!(sums, [Ok(0), Ok(2), Ok(4), Ok(6)]);
    // Named after the module around the block, as a module-level task would be.
    assert_eq!(add::Task::NAME, concat!(module_path!(), "::add"));
    assert!(parallel::registered_tasks().contains(&sum::Task::NAME));
}

crate::backends!(tasks_in_a_function_body_run);

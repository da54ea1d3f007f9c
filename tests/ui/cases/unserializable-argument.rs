use parallel::task;

struct Connection;

#[task]
fn query(connection: Connection, sql: String) -> usize {
    let _ = connection;
    sql.len()
}

fn main() {}

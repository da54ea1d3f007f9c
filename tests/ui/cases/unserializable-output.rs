use parallel::task;

struct Connection;

#[task]
fn connect(url: String) -> Connection {
    let _ = url;
    Connection
}

fn main() {}

use parallel::task;

#[derive(Debug)]
struct ParseError;

#[task]
fn parse(text: String) -> Result<u32, ParseError> {
    text.parse().map_err(|_| ParseError)
}

fn main() {}

use parallel::task;

#[derive(serde::Serialize, serde::Deserialize)]
struct Resize {
    path: String,
    width: u32,
}

#[task]
impl Resize {
    fn run(self) -> Vec<u8> {
        Vec::new()
    }
}

fn main() {}

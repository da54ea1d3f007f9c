use parallel::task;

#[task]
#[derive(serde::Serialize, serde::Deserialize)]
struct Resize {
    path: String,
    width: u32,
}

fn main() {}

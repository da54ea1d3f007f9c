use parallel::task;

#[derive(serde::Serialize, serde::Deserialize)]
struct Resize {
    path: String,
}

#[task]
impl Clone for Resize {
    fn clone(&self) -> Self {
        Resize { path: self.path.clone() }
    }
}

fn main() {}

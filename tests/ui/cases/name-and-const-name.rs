use parallel::{task, Environment, Never, Task};

#[derive(serde::Serialize, serde::Deserialize)]
struct Resize {
    width: u32,
}

#[task(name = "images::resize")]
impl Task for Resize {
    type Output = u32;
    type Error = Never;
    const NAME: &'static str = "resize";

    fn run(self, _env: &mut Environment) -> Result<u32, Never> {
        Ok(self.width)
    }
}

fn main() {}

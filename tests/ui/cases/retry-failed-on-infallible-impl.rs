use parallel::{task, Environment, Never, Task};

#[derive(serde::Serialize, serde::Deserialize)]
struct Shout {
    text: String,
}

#[task(retries = 2, retry_failed)]
impl Task for Shout {
    type Output = String;
    type Error = Never;
    const NAME: &'static str = "shout";

    fn run(self, _env: &mut Environment) -> Result<String, Never> {
        Ok(self.text.to_uppercase())
    }
}

fn main() {}

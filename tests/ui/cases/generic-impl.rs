use parallel::{task, Environment, Never, Task};

#[derive(serde::Serialize, serde::Deserialize)]
struct Echo<T> {
    value: T,
}

#[task]
impl<T> Task for Echo<T>
where
    T: serde::Serialize + serde::de::DeserializeOwned + Send + 'static,
{
    type Output = T;
    type Error = Never;
    const NAME: &'static str = "echo";

    fn run(self, _env: &mut Environment) -> Result<T, Never> {
        Ok(self.value)
    }
}

fn main() {}

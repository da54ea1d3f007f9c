use parallel::task;

struct Counter {
    count: u32,
}

impl Counter {
    #[task]
    fn bump(&mut self, by: u32) -> u32 {
        self.count += by;
        self.count
    }
}

fn main() {
    let mut counter = Counter { count: 0 };
    counter.bump(1);
}

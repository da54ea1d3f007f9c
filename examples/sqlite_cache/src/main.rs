//! Each worker keeps a real SQLite connection in its [`Environment`], opened by the first task
//! that needs it and kept with a time-to-live, so that thousands of queries cost a handful of
//! `open` calls.
//!
//! `main` writes a database of 10,000 cities to a temporary directory, then runs lookups by id
//! and per-country aggregates as tasks. Each task says whether it had to open the connection:
//! the summary shows at most one opening per worker, checks every answer against the data, and
//! exits with status 1 when something does not match.
//!
//! ```text
//! cargo run -p sqlite_cache                                    # the process backend
//! cargo run -p sqlite_cache -- --backend thread --workers 4
//! ```
//!
//! `rusqlite::Connection` is not `Send`: that is fine, values in an `Environment` never leave
//! their worker. The database path is a task argument, so both backends work the same way.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use parallel::{task, Backend, Environment, Pool, RemoteError, TaskError};
use rusqlite::{Connection, OpenFlags, OptionalExtension};

/// How many cities the database holds; ids run from 1 to this.
const CITIES: i64 = 10_000;
/// The countries the cities are spread over.
const COUNTRIES: [&str; 8] = ["AR", "BR", "CA", "DE", "IN", "JP", "NG", "PT"];
/// How long an idle connection stays open in its worker: every use slides it forward.
const CONNECTION_TTL: Duration = Duration::from_secs(30);
/// How many lookups `main` runs; some ids are past the end, to find nothing.
const LOOKUPS: i64 = 3_000;

/// One row of the `cities` table.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct City {
    /// The primary key.
    id: i64,
    /// A made-up but pronounceable name.
    name: String,
    /// One of [`COUNTRIES`].
    country: String,
    /// The number of inhabitants.
    population: i64,
}

/// The city with id `id`, generated from the id alone so that `main` can check any answer.
fn generate_city(id: i64) -> City {
    const SYLLABLES: [&str; 16] = [
        "ba", "ko", "ri", "mu", "sel", "tan", "vo", "lin", "da", "por", "ne", "qui", "zu", "fer",
        "ho", "ga",
    ];
    // A splitmix64 step: cheap, deterministic and well spread.
    let mut bits = (id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    bits = (bits ^ (bits >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    bits = (bits ^ (bits >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    bits ^= bits >> 31;
    let syllables = 2 + (bits % 3) as usize;
    let mut name: String =
        (0..syllables).map(|i| SYLLABLES[((bits >> (4 * i + 8)) & 15) as usize]).collect();
    name[..1].make_ascii_uppercase();
    City {
        id,
        name,
        country: COUNTRIES[((bits >> 40) % COUNTRIES.len() as u64) as usize].to_owned(),
        population: 1_000 + ((bits >> 20) % 2_000_000) as i64,
    }
}

/// Writes the `cities` table with ids 1 to [`CITIES`] into a new database at `path`.
fn create_database(path: &str) -> rusqlite::Result<()> {
    let mut connection = Connection::open(path)?;
    connection.execute_batch(
        "CREATE TABLE cities (
             id INTEGER PRIMARY KEY,
             name TEXT NOT NULL,
             country TEXT NOT NULL,
             population INTEGER NOT NULL
         );
         CREATE INDEX cities_by_country ON cities (country);",
    )?;
    let transaction = connection.transaction()?;
    {
        let mut insert = transaction.prepare(
            "INSERT INTO cities (id, name, country, population) VALUES (?1, ?2, ?3, ?4)",
        )?;
        for city in (1..=CITIES).map(generate_city) {
            insert.execute((city.id, &city.name, &city.country, city.population))?;
        }
    }
    transaction.commit()
}

/// A task's answer, with what it cost the worker.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Answer<T> {
    /// What the query returned.
    value: T,
    /// Whether this task had to open the worker's connection.
    opened_connection: bool,
}

/// Returns the worker's read-only connection to `database`, opening it if the worker has none
/// (or its TTL expired), and whether it did.
fn connection<'env>(
    env: &'env mut Environment,
    database: &str,
) -> rusqlite::Result<(&'env Connection, bool)> {
    let key = format!("sqlite:{database}");
    // `get` slides the connection's expiry forward: a busy worker keeps it open.
    let is_open = env.get::<Connection>(&key).is_some();
    if !is_open {
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        env.set_with_ttl(&key, Connection::open_with_flags(database, flags)?, CONNECTION_TTL);
    }
    let connection = env.get::<Connection>(&key).expect("found or stored just above");
    Ok((connection, !is_open))
}

/// Looks a city up by id. `rusqlite::Error` is not a serde type: [`RemoteError`] carries its
/// type name and message back, and lets `?` work.
#[task]
fn lookup(
    env: &mut Environment,
    database: String,
    id: i64,
) -> Result<Answer<Option<City>>, RemoteError> {
    let (connection, opened_connection) = connection(env, &database)?;
    // The statement cache lives in the connection, so it is kept along with it.
    let mut statement = connection
        .prepare_cached("SELECT id, name, country, population FROM cities WHERE id = ?1")?;
    let value = statement
        .query_row([id], |row| {
            Ok(City {
                id: row.get(0)?,
                name: row.get(1)?,
                country: row.get(2)?,
                population: row.get(3)?,
            })
        })
        .optional()?;
    Ok(Answer { value, opened_connection })
}

/// Per-country figures: how many cities, how many people, and the largest city.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct CountryStats {
    /// The number of cities.
    cities: i64,
    /// The total population of those cities.
    population: i64,
    /// The name of the most populous city.
    largest: String,
}

/// Aggregates the cities of one country in SQL.
#[task]
fn country_stats(
    env: &mut Environment,
    database: String,
    country: String,
) -> Result<Answer<CountryStats>, RemoteError> {
    let (connection, opened_connection) = connection(env, &database)?;
    let mut totals = connection
        .prepare_cached("SELECT count(*), sum(population) FROM cities WHERE country = ?1")?;
    let (cities, population) =
        totals.query_row([&country], |row| Ok((row.get(0)?, row.get(1)?)))?;
    let mut largest = connection.prepare_cached(
        "SELECT name FROM cities WHERE country = ?1 ORDER BY population DESC, id LIMIT 1",
    )?;
    let largest = largest.query_row([&country], |row| row.get(0))?;
    Ok(Answer { value: CountryStats { cities, population, largest }, opened_connection })
}

/// The figures [`country_stats`] must find, computed from the generator.
fn expected_stats(country: &str) -> CountryStats {
    let cities: Vec<City> =
        (1..=CITIES).map(generate_city).filter(|c| c.country == country).collect();
    let largest = cities
        .iter()
        .max_by_key(|c| (c.population, std::cmp::Reverse(c.id)))
        .map(|c| c.name.clone())
        .unwrap_or_default();
    CountryStats {
        cities: cities.len() as i64,
        population: cities.iter().map(|c| c.population).sum(),
        largest,
    }
}

/// Parses `[--backend thread|process] [--workers N]` into a pool builder.
fn pool_from_args(mut args: impl Iterator<Item = String>) -> Result<Pool, String> {
    let mut builder = Pool::builder();
    while let Some(arg) = args.next() {
        let value = args.next().unwrap_or_default();
        builder = match (arg.as_str(), value.as_str()) {
            ("--backend", "thread") => builder.backend(Backend::Thread),
            ("--backend", "process") => builder.backend(Backend::Process),
            ("--workers", count) => builder.workers(
                count.parse().map_err(|_| format!("--workers takes a number, not {count:?}"))?,
            ),
            _ => {
                return Err(format!(
                "usage: sqlite_cache [--backend thread|process] [--workers N]; not {arg} {value}"
            ))
            }
        };
    }
    builder.build().map_err(|error| format!("cannot build the pool: {error}"))
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("sqlite_cache: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Builds the database, runs the tasks and checks their answers.
fn run() -> Result<(), String> {
    let pool = pool_from_args(std::env::args().skip(1))?;
    let directory = tempfile::tempdir()
        .map_err(|error| format!("cannot make a temporary directory: {error}"))?;
    let database = directory.path().join("cities.sqlite3").to_string_lossy().into_owned();
    create_database(&database).map_err(|error| format!("cannot write {database}: {error}"))?;

    let started = Instant::now();
    let mut tasks = 0usize;
    let mut opened = 0usize;
    let mut mismatches = Vec::new();

    // Lookups stream back in order; every 10th id is past the end of the table.
    let ids = (1..=LOOKUPS).map(|i| if i % 10 == 0 { CITIES + i } else { i * 7 % CITIES + 1 });
    let mut found = 0usize;
    for (id, result) in ids.clone().zip(pool.map(ids.map(|id| lookup::new(database.clone(), id)))) {
        let answer = result.map_err(|error| format!("lookup({id}) failed: {error}"))?;
        tasks += 1;
        opened += usize::from(answer.opened_connection);
        let expected = (id <= CITIES).then(|| generate_city(id));
        found += usize::from(answer.value.is_some());
        if answer.value != expected {
            mismatches.push(format!("lookup({id}) = {:?}, expected {expected:?}", answer.value));
        }
    }

    // Aggregates, submitted all at once and joined afterwards.
    let handles: Vec<_> = COUNTRIES
        .iter()
        .map(|country| country_stats::dispatch_on(&pool, database.clone(), (*country).to_owned()))
        .collect();
    let mut largest = Vec::new();
    for (country, handle) in COUNTRIES.iter().zip(handles) {
        let answer = match handle.join() {
            Ok(answer) => answer,
            Err(TaskError::Failed(error)) => {
                return Err(format!("country_stats({country}): {error}"))
            }
            Err(other) => return Err(format!("country_stats({country}) did not run: {other}")),
        };
        tasks += 1;
        opened += usize::from(answer.opened_connection);
        let expected = expected_stats(country);
        if answer.value != expected {
            mismatches.push(format!(
                "country_stats({country}) = {:?}, expected {expected:?}",
                answer.value
            ));
        }
        largest
            .push(format!("{country} {} ({} cities)", answer.value.largest, answer.value.cities));
    }
    let elapsed = started.elapsed();

    println!("largest cities: {}", largest.join(", "));
    println!(
        "{tasks} tasks ({LOOKUPS} lookups, {found} found; {} aggregates) on {} {} workers in {:.2} s",
        COUNTRIES.len(),
        pool.workers(),
        if pool.backend() == Backend::Process { "process" } else { "thread" },
        elapsed.as_secs_f64(),
    );
    println!(
        "SQLite connections opened: {opened} for {tasks} tasks (at most one per worker; an idle one \
         closes after {CONNECTION_TTL:?})"
    );

    if !mismatches.is_empty() {
        return Err(format!("{} wrong answer(s), first: {}", mismatches.len(), mismatches[0]));
    }
    if opened == 0 || opened > pool.workers() {
        return Err(format!(
            "{opened} connections for {} workers: the Environment did not keep them",
            pool.workers()
        ));
    }
    Ok(())
}

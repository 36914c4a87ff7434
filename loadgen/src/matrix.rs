//! The benchmark matrix.
pub struct MatrixConfig {
    pub quick: bool,
    pub wgrelay: String,
    pub null: String,
    pub relay_flags: String,
    pub out: String,
    pub svg: String,
    pub raw: String,
    pub relay_cpu: usize,
    pub sessions: Option<Vec<usize>>,
    pub reps: Option<usize>,
    pub command: String,
}
pub fn run(_c: &MatrixConfig) -> Result<(), String> {
    Err("todo".into())
}

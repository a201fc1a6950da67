//! The desktop chat client arrives with the GUI issue; until then it points people at the CLI.

fn main() {
    eprintln!("hearth-gui is not built yet: use `hearth chat` for a terminal chat");
    std::process::exit(2);
}

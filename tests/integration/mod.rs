mod bad_input;
mod migration;
mod processes;
mod support;

mod bad_input;
mod manifests;
mod migration;
mod processes;
mod support;

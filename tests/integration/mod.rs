mod bad_input;
mod llm;
mod manifests;
mod migration;
mod processes;
mod support;

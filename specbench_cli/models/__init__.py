"""What a run decodes with: a model folder for any way a user names one (named targets from the
package index, GGUF files, hub ids), the offline built-in benchmark (builtin/) and the add-ons
each is given (prepare: the built-in's; target_addons + corpus: a named target's)."""

"""One module per `imgcls` command: its sub-parser (`add_parser`), its handler and its examples.

A command module imports nothing heavy at module level; its handler imports the library it calls.
"""

from imgcls.commands import (abstain, calibrate, compare, completion, data, doctor, evaluate, explain, export, index,
                             lr_find, models, predict, search, serve, shards, show, train, tune)

# In the order `imgcls --help` lists them.
COMMANDS = (train, tune, lr_find, evaluate, calibrate, abstain, predict, explain, export, data, shards, show, serve,
            compare, index, search, doctor, models, completion)


"""Make the answer model's process die by a signal at its Nth llama.cpp evaluation, the
way code built for another CPU dies (SIGILL at the first matrix multiply) or a crash in
native code does. Tests put this folder on PYTHONPATH and set

    RAGSERVER_TEST_CRASH=SIGILL        the signal
    RAGSERVER_TEST_CRASH_AFTER=N       evaluations that succeed first (0: the prompt's)

Only `python -m ragserver.model_process` is touched: the real model loads and runs until
then, and the process dies by the real signal, as the kernel would end it.
"""

import os
import sys

if os.environ.get("RAGSERVER_TEST_CRASH"):
    import importlib.abc
    import importlib.machinery
    import signal

    class _CrashOnEval(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name != "llama_cpp.llama":
                return None
            sys.meta_path.remove(self)
            spec = importlib.machinery.PathFinder.find_spec(name, path)
            load = spec.loader.exec_module

            def exec_module(module):
                load(module)
                if not sys.argv[0].endswith(os.path.join("ragserver", "model_process.py")):
                    return
                evaluate = module.Llama.eval
                after = int(os.environ.get("RAGSERVER_TEST_CRASH_AFTER", "0"))
                calls = []

                def eval(self, tokens):
                    calls.append(1)
                    if len(calls) > after:
                        os.kill(os.getpid(), getattr(signal, os.environ["RAGSERVER_TEST_CRASH"]))
                    return evaluate(self, tokens)

                module.Llama.eval = eval

            spec.loader.exec_module = exec_module
            return spec

    sys.meta_path.insert(0, _CrashOnEval())

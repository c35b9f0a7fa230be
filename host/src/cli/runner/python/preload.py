"""Standard-library modules imported at build time, so that they are in the
snapshot and an author's source can import them at run time without the
stdlib on a preopen. Anything not listed (and not imported by these) is
importable at run time only if the host preopens the stdlib at /python.
Keep it to pure, commonly used modules: each adds to the snapshot."""

import abc, array, base64, binascii, bisect, calendar, collections, collections.abc  # noqa: E401,F401
import contextlib, copy, csv, dataclasses, datetime, decimal, difflib, enum  # noqa: E401,F401
import fnmatch, fractions, functools, hashlib, heapq, hmac, html, io, ipaddress  # noqa: E401,F401
import itertools, json, math, operator, pprint, random, re, secrets, shlex  # noqa: E401,F401
import statistics, string, struct, textwrap, time, tomllib, typing, unicodedata  # noqa: E401,F401
import urllib.parse, uuid, zlib  # noqa: E401,F401

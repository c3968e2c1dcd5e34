"""The ``psic`` command line (Typer): thin commands that parse, call the codec API, map errors to exit codes."""

from __future__ import annotations

import json
import os
import time
from typing import Annotated

import typer

from psic_cli.console import Messages, exit_on_error

EPILOG = (
    "Exit codes: 0 ok; 1 internal error; 2 usage; 3 bad input (image or .psic); 4 key problem (also a "
    "sealed file that does not open: wrong key or damaged file); "
    "5 output exists (without --force) or cannot be written; 130 interrupted (Ctrl-C); 143 terminated "
    "(SIGTERM)."
)

app = typer.Typer(
    name="psic",
    help="Privacy-shielded image codec: the default decode looks like the photo to people while "
    "vision-language models cannot tell what it shows; the key gives back the full view. The key is a "
    "switch between views, not a lock: anyone with the weights can decode a .psic file. Publish the "
    "decoded shielded image, or seal files that travel ('psic seal').",
    epilog=EPILOG,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_show_locals=False,
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode=None,  # plain Click help: paragraphs re-flow to the terminal width
)

Force = Annotated[bool, typer.Option("--force", "-f", help="Overwrite existing outputs.")]
Quiet = Annotated[bool, typer.Option("--quiet", help="No notices on stderr (errors still print).")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Tracebacks on errors.")]
Jobs = Annotated[int, typer.Option("--jobs", "-j", min=1, help="Worker processes for folders (each loads the "
                                                              "model once).")]
SealKey = Annotated[str | None, typer.Option("--seal", metavar="KEYFILE", help="Seal the output: encrypt and "
                                             "authenticate the whole file under this key ('psic seal').")]
FollowSymlinks = Annotated[bool, typer.Option("--follow-symlinks", help="In a folder, also follow file symlinks "
                                              "that point outside it (by default they are refused).")]


def _batch(kind: str, src: str, output: str | None, suffix: str, force: bool, jobs: int, options: dict,
           msgs: Messages) -> None:
    """Convert a folder; exits with the worst per-file code."""
    from pathlib import Path

    from psic_cli.batch import plan, run_batch, summary
    from psic_cli.console import progress
    from psic_cli.errors import InputError, OutputError

    if output == "-":
        raise OutputError("a folder cannot be written to stdout; give -o OUTDIR")
    if kind == "decode" and not output:
        raise InputError("decoding a folder needs -o OUTDIR (decoded views never land beside the originals)")
    out_dir = Path(output) if output else Path(src)
    tasks, report = plan(kind, Path(src), out_dir, suffix, force, options.get("follow_symlinks", False))
    bar = progress(not msgs.quiet)
    start = time.time()

    def on_result(res) -> None:
        if res[2]:
            msgs.error(res[1])
        elif res[1]:  # skipped: another run made its output meanwhile
            msgs.notice(res[1])
        elif msgs.verbose:
            msgs.notice(f"{res[0]}: done")
        if bar is not None:
            n = report.done + len(report.failed)
            rate = n / max(1e-9, time.time() - start)
            bar.update(task_id, advance=1, rate=f"{rate:.2f} img/s")

    for r in report.failed:
        msgs.error(r[1])
    if bar is not None:
        with bar:
            task_id = bar.add_task(kind, total=len(tasks), rate="")
            run_batch(kind, tasks, report, options, jobs, on_result, out_dir)
    else:
        run_batch(kind, tasks, report, options, jobs, on_result, out_dir)
    msgs.notice(summary(kind, report))
    if report.exit_code:
        raise SystemExit(report.exit_code)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        print(f"psic {version('psic')}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")]
    = False,
) -> None:
    pass


@app.command(short_help="Encode an image or a folder of images to .psic.")
def encode(
    src: Annotated[str, typer.Argument(help="Input image (JPEG, PNG, WebP, TIFF, GIF, ...), or - for stdin.")],
    output: Annotated[str | None, typer.Option("--output", "-o", help="Output .psic file, or - for stdout. "
                                                "Default: the input name with .psic.")] = None,
    quality: Annotated[int | None, typer.Option("--quality", "-q", help="Quality level, 1 (smallest) to the "
                                                 "model's highest (see 'psic models'). Default: the middle level.")]
    = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Model id (see 'psic models'). "
                                               "Default: psic-sh.")] = None,
    max_pixels: Annotated[int, typer.Option(help="Refuse images with more pixels than this.")] = 50_000_000,
    effort: Annotated[int, typer.Option("--effort", "-e", min=0, max=200, help="Search steps on the coded "
                                         "latents: a better trade of size and quality at the same level (the "
                                         "top levels gain detail), about a second per step per 0.4 megapixels "
                                         "on one core (0: one pass; 40 is a good trade). "
                                         "Images over 2 megapixels are coded in one pass.")] = 0,
    key: Annotated[str | None, typer.Option("--key", "-k", help="The model's key file: with --effort, the search "
                                             "keeps the full view close to the photo (needed once a model's "
                                             "shield is trained).")] = None,
    seal: SealKey = None,
    jobs: Jobs = 1,
    follow_symlinks: FollowSymlinks = False,
    force: Force = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Encode an image (or a folder, recursively) to .psic.

    A .psic file is not encrypted: anyone with the weights can decode every view of it. --seal KEYFILE
    encrypts and authenticates it, so that only that key opens it.

    A folder input mirrors its tree into -o OUTDIR (default: beside the inputs), skips images whose .psic
    exists (--force redoes them), keeps going past bad files and exits with the worst error code.

    EXIF orientation is applied; all metadata (EXIF, GPS, ICC profile, comments) is dropped and never
    coded. Grayscale, palette, RGBA, CMYK and 16-bit images are converted to 8-bit RGB (with a notice);
    animated images use their first frame.

    \b
    Examples:
      psic encode photo.jpg
      psic encode photo.jpg -q 4 -o out.psic
      cat photo.png | psic encode - -o - > photo.psic
      psic encode photos/ -o coded/ -j 2
      psic encode --seal mine.key photo.jpg
      psic encode -q 7 --effort 40 --key model.key photo.jpg
    """
    msgs = Messages(quiet, verbose)
    from psic_cli.jobs import encode_file

    with exit_on_error(msgs):
        if src != "-" and os.path.isdir(src):
            from psic_cli.codec import check_encode_options

            check_encode_options(model, quality)  # a bad -m/-q fails once, not once per file
            if seal:
                from psic_cli.jobs import read_seal_key

                read_seal_key(seal, warn=msgs.warn)  # a bad key file fails once, before the batch
            opts = {"quality": quality, "model": model, "max_pixels": max_pixels, "force": force, "seal": seal,
                    "follow_symlinks": follow_symlinks, "effort": effort, "key": key}
            _batch("encode", src, output, ".psic", force, jobs, opts, msgs)
            return
        res = encode_file(src, output, quality, model, force, max_pixels, seal_key_file=seal, warn=msgs.warn,
                          effort=effort, key_file=key)
        for n in res.notices:
            msgs.notice(n)
        msgs.notice(f"{src} -> {res.dst}: {res.bytes_out} bytes, {res.bpp:.4f} bpp")


@app.command(short_help="Decode .psic to an image (the full view with --key).")
def decode(
    src: Annotated[str, typer.Argument(help="Input .psic file, or - for stdin.")],
    output: Annotated[str | None, typer.Option("--output", "-o", help="Output image, or - for stdout. "
                                                "Default: the input name with .shielded.png (.full.png, "
                                                ".strong.png, .machine.png for the other views).")] = None,
    key: Annotated[str | None, typer.Option("--key", "-k", help="Key file: switches to the full view (and opens "
                                         "a file sealed with it).")] = None,
    seal: Annotated[str | None, typer.Option("--seal", metavar="KEYFILE", help="Key file that opens a sealed "
                                          "file, when it is not --key.")] = None,
    view: Annotated[str | None, typer.Option(help="shielded (default without a key), strong (no key; survives "
                                              "re-encoding better, costs more quality), full (default with a key) "
                                              "or machine (with a key).")] = None,
    shield: Annotated[str | None, typer.Option(help="Shield level of the keyless view: subtle (= --view shielded, "
                                                "the default) or strong (= --view strong).")] = None,
    fmt: Annotated[str | None, typer.Option("--format", help="png, jpg or webp. Default: from the output's "
                                             "extension, else png.")] = None,
    output_quality: Annotated[int | None, typer.Option("--output-quality", help="JPEG/WebP quality of the "
                                                        "decoded image, 1-100. Default: 95.")] = None,
    max_pixels: Annotated[int, typer.Option(help="Refuse files that claim more pixels than this.")] = 50_000_000,
    timeout: Annotated[float | None, typer.Option(help="Give up (exit 3, nothing written) when a file takes "
                                                   "longer than this many seconds to decode.")] = None,
    jobs: Jobs = 1,
    follow_symlinks: FollowSymlinks = False,
    force: Force = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Decode a .psic file (or a folder of them): the privacy-shielded view, or the full view with --key.

    A key that does not open the file's model is refused (exit 4) and nothing is written. A sealed file
    opens only with the key that sealed it (--seal, else --key); without it, or when it was changed, the
    decode fails with exit 4 ("wrong key or damaged file": the two cannot be told apart) and writes nothing.
    never take the name of the image the .psic was made from, and no decode (not even with --force)
    writes over that image. Grayscale sources decode to grayscale images.

    \b
    Examples:
      psic decode photo.psic
      psic decode --key mine.key photo.psic -o full.png
      psic decode --view strong photo.psic -o strong.png
      psic decode --seal mine.key --key weights/shipped.key sealed.psic -o full.png
      psic decode coded/ -o views/ -j 2
    """
    msgs = Messages(quiet, verbose)
    from psic_cli.jobs import decode_file

    with exit_on_error(msgs):
        if src != "-" and os.path.isdir(src):
            from psic_cli.codec import check_shield, check_view

            if key:
                from psic_cli.keys import read_key

                read_key(key, warn=msgs.warn)  # a bad key file fails once, before the batch
            if seal:
                from psic_cli.keys import read_key

                read_key(seal, warn=msgs.warn)  # the seal key too
            the_view = check_shield(shield, check_view(view, key is not None))
            if timeout is not None and not timeout > 0:
                from psic_cli.errors import UsageError

                raise UsageError(f"--timeout must be positive (got {timeout})")
            from psic_cli.imageio import output_format
            from psic_cli.jobs import check_output_quality, decoded_suffix

            check_output_quality(output_quality, output_format(None, fmt))
            opts = {"key": key, "view": view, "fmt": fmt, "force": force, "max_pixels": max_pixels,
                    "shield": shield, "seal": seal, "follow_symlinks": follow_symlinks, "timeout": timeout,
                    "output_quality": output_quality}
            _batch("decode", src, output, decoded_suffix(the_view, None, fmt), force, jobs, opts, msgs)
            return
        res = decode_file(src, output, key, view, fmt, force, warn=msgs.warn, max_pixels=max_pixels,
                          shield=shield, seal_key_file=seal, timeout=timeout, output_quality=output_quality)
        msgs.notice(f"{src} -> {res.dst}")


@app.command(short_help="Show a .psic file's header and the key that opens it.")
def info(
    src: Annotated[str, typer.Argument(help="A .psic file, or - for stdin.")],
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    key: Annotated[str | None, typer.Option("--key", "-k", help="Key file that opens a sealed file.")] = None,
    verbose: Verbose = False,
) -> None:
    """Show a .psic file's header: model, quality, size, bpp, and the key fingerprint that opens it.

    Of a sealed file, only that it is sealed and its size show, unless --key opens it.

    \b
    Examples:
      psic info photo.psic
      psic info --json photo.psic
      psic info --key mine.key sealed.psic
    """
    msgs = Messages(False, verbose)
    from psic_cli.jobs import info_report

    with exit_on_error(msgs):
        meta = info_report(src, key, warn=msgs.warn)
        if as_json:
            print(json.dumps(meta, indent=2))
        else:
            for k, v in meta.items():
                print(f"{k:>16}: {v}")


RequiredKey = Annotated[str, typer.Option("--key", "-k", metavar="KEYFILE", help="Key file (from 'psic keygen').")]


@app.command(name="seal", short_help="Encrypt and authenticate a .psic file under a key.")
def seal_(
    src: Annotated[str, typer.Argument(help="A .psic file, or - for stdin.")],
    key: RequiredKey,
    output: Annotated[str | None, typer.Option("--output", "-o", help="Sealed file, or - for stdout. "
                                                "Default: photo.psic -> photo.sealed.psic.")] = None,
    force: Force = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Seal a .psic file: encrypt and authenticate it under a key (ChaCha20-Poly1305), for files that travel.

    A plain .psic file is not private: anyone with the weights decodes every view of it, key or not. A
    sealed one opens only with the key that sealed it ('psic unseal', or 'psic decode --seal/--key'); any
    changed byte is detected. Sealing adds 58 bytes. Sealing with the public key that ships with psic
    protects nothing (a warning says so).

    \b
    Examples:
      psic keygen mine.key
      psic seal photo.psic --key mine.key
      psic seal photo.psic -k mine.key -o - > photo.sealed.psic
    """
    msgs = Messages(quiet, verbose)
    from psic_cli.jobs import seal_file

    with exit_on_error(msgs):
        res = seal_file(src, output, key, force, warn=msgs.warn)
        msgs.notice(f"{src} -> {res.dst}: sealed, {res.bytes_out} bytes")


@app.command(short_help="Open a sealed .psic file with its key.")
def unseal(
    src: Annotated[str, typer.Argument(help="A sealed .psic file, or - for stdin.")],
    key: RequiredKey,
    output: Annotated[str | None, typer.Option("--output", "-o", help="Plain .psic file, or - for stdout. "
                                                "Default: photo.sealed.psic -> photo.psic.")] = None,
    force: Force = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Unseal a sealed .psic file with the key that sealed it; writes the plain .psic file.

    A wrong key or a changed byte fails with exit 4 ("wrong key or damaged file": the cipher cannot tell
    the two apart) and writes nothing.

    \b
    Examples:
      psic unseal photo.sealed.psic --key mine.key
      psic unseal photo.sealed.psic -k mine.key -o photo.psic
    """
    msgs = Messages(quiet, verbose)
    from psic_cli.jobs import unseal_file

    with exit_on_error(msgs):
        res = unseal_file(src, output, key, force, warn=msgs.warn)
        msgs.notice(f"{src} -> {res.dst}: unsealed, {res.bytes_out} bytes")


@app.command(short_help="Write a new random key file.")
def keygen(
    output: Annotated[str, typer.Argument(help="Key file to write (mode 0600).")],
    force: Force = False,
    verbose: Verbose = False,
) -> None:
    """Write a new random key (32 bytes, armoured text, mode 0600).

    A new key seals files at once ('psic seal', 'psic encode --seal'); as a view key it opens nothing
    until a model is trained with it ('psic train --key'). A view key is a switch, not a lock: anyone with
    the weights decodes every view (docs/threat-model.md).

    \b
    Examples:
      psic keygen mine.key
    """
    msgs = Messages(False, verbose)
    from psic_cli.keys import fingerprint, generate_key, write_key

    with exit_on_error(msgs):
        if output == "-":
            from psic_cli.errors import OutputError

            raise OutputError("keys are written to a file, not stdout")
        key = generate_key()
        write_key(output, key, force=force)
        msgs.notice(f"wrote {output} (fingerprint {fingerprint(key)})")


@app.command(short_help="List the installed models (* marks the default).")
def models(as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False) -> None:
    """List the installed models, their qualities, shield status and key fingerprints."""
    with exit_on_error(Messages()):
        _models(as_json)


def _models(as_json: bool) -> None:
    from psic_cli.views import trained_views
    from psic_cli.zoo import list_models, weights_dir

    rows = [
        {
            "model": m.model_id,
            "arch": m.metadata.get("arch"),
            "qualities": m.qualities,
            "shield": m.metadata.get("shield", "unknown"),
            "views": trained_views(m.metadata),
            "steps": m.metadata.get("steps"),
            "key_fingerprint": m.key_fingerprint,
            "file": str(m.path),
        }
        for m in list_models()
    ]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    if not rows:
        print(f"no models installed in {weights_dir()}")
        return
    from psic_cli.zoo import DEFAULT_MODEL

    table = [("", "MODEL", "ARCH", "QUALITIES", "SHIELD", "VIEWS", "KEY", "STEPS")]
    table += [("*" if r["model"] == DEFAULT_MODEL else "", r["model"], str(r["arch"]), f"1-{r['qualities']}",
               str(r["shield"]), ",".join(r["views"]), r["key_fingerprint"], str(r["steps"])) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    if any(r["model"] == DEFAULT_MODEL for r in rows):
        print(f"* default model ({DEFAULT_MODEL}): used by 'psic encode' without -m")


@app.command(name="eval", short_help="Rate-distortion report vs JPEG/WebP.",
             context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
             add_help_option=False)
def eval_(ctx: typer.Context) -> None:
    """Rate-distortion report on an image folder vs JPEG/WebP ('python -m psic_lab.evaluation.rd'). Try -h."""
    raise SystemExit(_run_lab("psic_lab.evaluation.rd", list(ctx.args)))


@app.command(name="vlp-eval", short_help="Zero-shot VLP accuracy on a labelled folder.",
             context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
             add_help_option=False)
def vlp_eval(ctx: typer.Context) -> None:
    """Zero-shot top-1 and retrieval R@1 of a VLP on a labelled folder ('python -m psic_lab.vlp.eval'). Try -h."""
    _run_lab("psic_lab.vlp.eval", list(ctx.args))


@app.command(short_help="Train a model (needs the 'train' extra).",
             context_settings={"allow_extra_args": True, "ignore_unknown_options": True}, add_help_option=False)
def train(ctx: typer.Context) -> None:
    """Train a model (same as 'python -m psic_lab.training'; needs the 'train' extra). Try 'psic train rd -h'."""
    raise SystemExit(_run_lab("psic_lab.training.__main__", list(ctx.args)))


def _run_lab(module: str, args: list[str]) -> object:
    """Hand a lab command to ``module.main(args)``; the runtime never imports the lab package statically."""
    import importlib

    try:
        lab = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name is None or not e.name.startswith("psic_lab"):
            raise
        Messages().error(f"this command needs the lab package (psic_lab, from a source checkout with the "
                         f"'train' extra); run 'python -m {module.removesuffix('.__main__')}' there")
        raise typer.Exit(code=2) from None
    return lab.main(args)


def main() -> None:
    from psic_cli._compat import tune_malloc

    tune_malloc()  # fewer page faults between a large decode's tiles (glibc only)
    app()

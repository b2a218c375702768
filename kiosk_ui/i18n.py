"""Every string the kiosk shows, in Vietnamese (first) and English.

``STRINGS[key] = (vi, en)``; ``translator(lang)`` returns ``t(key, **fmt)`` for templates. A key
that is missing raises ``KeyError`` at render time, and a test checks that every key used by a
template exists and that both languages are filled in.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Literal

Lang = Literal["vi", "en"]
LANGS: tuple[Lang, ...] = ("vi", "en")
DEFAULT_LANG: Lang = "vi"

STRINGS: dict[str, tuple[str, str]] = {
    # Frame
    "app.title": ("Kiosk dịch vụ công", "Public service kiosk"),
    "nav.home": ("Trang chủ", "Home"),
    "nav.back": ("Quay lại", "Back"),
    "lang.switch": ("English", "Tiếng Việt"),
    "lang.switch.aria": ("Chuyển sang tiếng Anh", "Switch to Vietnamese"),
    "text.large": ("Chữ to", "Large text"),
    "error.generic": ("Đã có lỗi. Vui lòng thử lại.", "Something went wrong. Please try again."),
    # Home
    "home.welcome": ("Xin chào! Quý vị cần làm gì?", "Hello! What would you like to do?"),
    "home.procedures": ("Thủ tục hành chính", "Administrative procedures"),
    "home.procedures.sub": (
        "Giấy tờ cần chuẩn bị, lệ phí, thời gian giải quyết",
        "Documents to bring, fees, processing time",
    ),
    "home.lookup": ("Tra cứu hồ sơ", "Track your dossier"),
    "home.lookup.sub": (
        "Quét mã QR trên giấy biên nhận hoặc nhập mã hồ sơ",
        "Scan the QR on your receipt or type the dossier code",
    ),
    "home.identity": ("Định danh bằng CCCD", "Identify with your ID card"),
    "home.identity.sub": (
        "Điền sẵn họ tên, ngày sinh, địa chỉ từ thẻ căn cước",
        "Pre-fill your name, date of birth and address from your chip ID card",
    ),
    "home.rating": ("Đánh giá dịch vụ", "Rate our service"),
    "home.rating.sub": (
        "Ý kiến của quý vị giúp chúng tôi phục vụ tốt hơn",
        "Your opinion helps us serve you better",
    ),
    "home.news": ("Thông báo", "Announcements"),
    "home.news.sub": ("Chính sách mới, lịch tiếp công dân", "New policies, office hours"),
    "home.privacy": (
        "Máy không lưu thông tin cá nhân. Mọi dữ liệu được xoá khi quý vị rời máy.",
        "This kiosk keeps no personal data. Everything is cleared when you leave.",
    ),
    # Procedures
    "proc.title": ("Thủ tục hành chính", "Administrative procedures"),
    "proc.search": ("Tìm thủ tục", "Search procedures"),
    "proc.search.hint": (
        "Gõ tên thủ tục, có dấu hoặc không dấu (ví dụ: dang ky ket hon)",
        "Type a procedure name, in Vietnamese or English (e.g. marriage)",
    ),
    "proc.count": ("{n} thủ tục", "{n} procedures"),
    "proc.none": (
        "Không tìm thấy thủ tục phù hợp. Hãy thử từ khác.",
        "No matching procedure. Please try another word.",
    ),
    "proc.field": ("Lĩnh vực", "Field"),
    "proc.agency": ("Cơ quan giải quyết", "Handled by"),
    "proc.time": ("Thời gian giải quyết", "Processing time"),
    "proc.fee": ("Lệ phí", "Fee"),
    "proc.documents": ("Giấy tờ cần chuẩn bị", "Documents to bring"),
    "proc.online": ("Dịch vụ công trực tuyến", "Online service"),
    "proc.source": (
        "Thông tin để tham khảo; cán bộ tiếp nhận sẽ hướng dẫn chi tiết.",
        "For reference only; the reception officer will guide you in detail.",
    ),
    "online.full": ("Toàn trình (làm hoàn toàn trên mạng)", "Fully online"),
    "online.partial": ("Một phần (nộp trên mạng, nhận kết quả trực tiếp)", "Partly online"),
    "online.none": ("Nộp trực tiếp tại bộ phận một cửa", "In person at the one-stop desk"),
    # On-screen keyboard
    "kbd.space": ("Dấu cách", "Space"),
    "kbd.backspace": ("Xoá lùi", "Delete"),
    "kbd.clear": ("Xoá hết", "Clear all"),
    "kbd.shift": ("Chữ hoa", "Capital"),
    "kbd.telex.on": ("Gõ dấu: bật", "Accents: on"),
    "kbd.telex.off": ("Gõ dấu: tắt", "Accents: off"),
    "kbd.label": ("Bàn phím", "Keyboard"),
    # Dossier lookup
    "lookup.title": ("Tra cứu hồ sơ", "Track your dossier"),
    "lookup.hint": (
        "Đưa mã QR trên giấy biên nhận vào máy quét, hoặc nhập mã hồ sơ bằng bàn phím dưới đây.",
        "Hold the QR code on your receipt under the scanner, or type the dossier code below.",
    ),
    "lookup.code": ("Mã hồ sơ", "Dossier code"),
    "lookup.example": ("Ví dụ: 000.00.01.H26-260930-0012", "Example: 000.00.01.H26-260930-0012"),
    "lookup.submit": ("Tra cứu", "Look up"),
    "lookup.busy": ("Đang tra cứu, vui lòng chờ…", "Looking up, please wait…"),
    "lookup.not_found": (
        "Không tìm thấy hồ sơ có mã này. Vui lòng kiểm tra lại mã trên giấy biên nhận.",
        "No dossier has this code. Please check the code on your receipt.",
    ),
    "lookup.unavailable": (
        "Hệ thống tra cứu đang tạm gián đoạn. Vui lòng thử lại sau ít phút hoặc hỏi cán bộ tiếp nhận.",
        "The lookup service is temporarily unavailable. Please try again in a few minutes "
        "or ask at the reception desk.",
    ),
    "lookup.invalid": ("Mã hồ sơ chưa đúng", "The dossier code is not valid"),
    "lookup.status": ("Trạng thái", "Status"),
    "lookup.procedure": ("Thủ tục", "Procedure"),
    "lookup.agency": ("Nơi tiếp nhận", "Received by"),
    "lookup.received": ("Ngày tiếp nhận", "Received on"),
    "lookup.due": ("Ngày hẹn trả kết quả", "Result expected on"),
    "lookup.steps": ("Quá trình xử lý", "Progress"),
    "lookup.note": ("Lưu ý", "Note"),
    "lookup.print": ("In phiếu", "Print receipt"),
    "lookup.again": ("Tra cứu mã khác", "Look up another code"),
    "step.done": ("Đã xong", "Done"),
    "step.current": ("Đang thực hiện", "In progress"),
    "step.pending": ("Chưa thực hiện", "Not started"),
    # Printing
    "print.ok": (
        "Đã in phiếu. Mời quý vị nhận phiếu ở khe máy in.",
        "Printed. Please take your receipt from the printer slot.",
    ),
    "print.paper_out": (
        "Máy in đã hết giấy. Vui lòng báo cán bộ tiếp nhận.",
        "The printer is out of paper. Please tell a staff member.",
    ),
    "print.offline": (
        "Máy in đang không hoạt động. Vui lòng báo cán bộ tiếp nhận.",
        "The printer is not working. Please tell a staff member.",
    ),
    "print.none": ("Máy này không có máy in.", "This kiosk has no printer."),
    "print.nothing": ("Chưa có kết quả tra cứu để in.", "There is no lookup result to print yet."),
    # Identity
    "id.title": ("Định danh bằng CCCD", "Identify with your chip ID card"),
    "id.consent.heading": ("Trước khi quét thẻ", "Before you scan your card"),
    "id.consent.text1": (
        "Máy sẽ đọc mã QR trên thẻ căn cước (CCCD) để điền sẵn họ tên, ngày sinh và địa chỉ của quý vị.",
        "The kiosk will read the QR code on your chip ID card (CCCD) to pre-fill your name, "
        "date of birth and address.",
    ),
    "id.consent.text2": (
        "Thông tin chỉ hiện trên màn hình này, không được lưu lại hay gửi đi, "
        "và sẽ bị xoá khi quý vị bấm “Xoá” hoặc rời máy.",
        "Your details are only shown on this screen; they are not stored or sent anywhere, "
        "and are erased when you press “Clear” or leave the kiosk.",
    ),
    "id.consent.agree": ("Tôi đồng ý", "I agree"),
    "id.consent.decline": ("Không, quay lại", "No, go back"),
    "id.scan": (
        "Mời đưa mặt sau thẻ CCCD (có mã QR) vào máy quét",
        "Hold the back of your ID card (with the QR code) under the scanner",
    ),
    "id.filled": ("Thông tin đọc từ thẻ", "Details read from your card"),
    "id.name": ("Họ và tên", "Full name"),
    "id.dob": ("Ngày sinh", "Date of birth"),
    "id.sex": ("Giới tính", "Sex"),
    "id.address": ("Nơi thường trú", "Place of residence"),
    "id.number": ("Số CCCD", "ID number"),
    "id.privacy": (
        "Số CCCD được che một phần. Thông tin sẽ bị xoá khi quý vị bấm “Xoá” hoặc rời máy.",
        "Your ID number is partly hidden. Your details are erased when you press “Clear” or leave.",
    ),
    "id.clear": ("Xoá / Clear", "Clear / Xoá"),
    "id.cleared": ("Đã xoá thông tin của quý vị.", "Your details have been erased."),
    "id.need_consent": (
        "Vui lòng đọc và bấm “Tôi đồng ý” trước khi quét thẻ.",
        "Please read and press “I agree” before scanning your card.",
    ),
    "id.open_first": (
        "Để dùng thẻ CCCD, vui lòng chọn “Định danh bằng CCCD” trước.",
        "To use your ID card, please choose “Identify with your ID card” first.",
    ),
    "id.bad_card": ("Không đọc được thẻ", "The card could not be read"),
    "sex.male": ("Nam", "Male"),
    "sex.female": ("Nữ", "Female"),
    "scan.unknown": (
        "Mã vừa quét không phải mã biên nhận hồ sơ hay thẻ CCCD.",
        "The scanned code is neither a dossier receipt nor an ID card.",
    ),
    "scan.garbage": ("Máy quét đọc không rõ. Vui lòng quét lại.", "The scan was unclear. Please scan again."),
    # Rating
    "rate.title": ("Đánh giá dịch vụ", "Rate our service"),
    "rate.question": (
        "Quý vị hài lòng với dịch vụ hôm nay như thế nào?",
        "How satisfied are you with our service today?",
    ),
    "rate.1": ("Rất không hài lòng", "Very unsatisfied"),
    "rate.2": ("Không hài lòng", "Unsatisfied"),
    "rate.3": ("Bình thường", "Neutral"),
    "rate.4": ("Hài lòng", "Satisfied"),
    "rate.5": ("Rất hài lòng", "Very satisfied"),
    "rate.reasons": (
        "Điều gì khiến quý vị đánh giá như vậy? (không bắt buộc)",
        "What made you choose this? (optional)",
    ),
    "reason.fast": ("Nhanh chóng", "Quick"),
    "reason.friendly": ("Cán bộ thân thiện", "Friendly staff"),
    "reason.clear": ("Hướng dẫn dễ hiểu", "Clear guidance"),
    "reason.wait": ("Chờ lâu", "Long wait"),
    "reason.complex": ("Thủ tục phức tạp", "Complicated procedure"),
    "reason.kiosk": ("Máy khó dùng", "Kiosk hard to use"),
    "rate.send": ("Gửi đánh giá", "Send rating"),
    "rate.pick": ("Vui lòng chọn một mức hài lòng.", "Please choose how satisfied you are first."),
    "rate.thanks": ("Cảm ơn quý vị đã đánh giá!", "Thank you for your feedback!"),
    "rate.anon": ("Đánh giá không kèm thông tin cá nhân.", "Ratings are anonymous."),
    # Submitting a dossier
    "proc.submit": ("Nộp hồ sơ tại máy này", "Submit at this kiosk"),
    "submit.title": ("Nộp hồ sơ", "Submit a dossier"),
    "submit.none": (
        "Chưa chọn thủ tục. Mời chọn thủ tục cần nộp trong danh sách thủ tục.",
        "No procedure chosen yet. Please choose one from the procedures list.",
    ),
    "submit.steps": ("Các bước nộp hồ sơ", "Submission steps"),
    "submit.step.identify": ("Định danh", "Identify"),
    "submit.step.form": ("Tờ khai", "Form"),
    "submit.step.documents": ("Giấy tờ", "Documents"),
    "submit.step.review": ("Kiểm tra", "Review"),
    "submit.step.consent": ("Xác nhận", "Confirm"),
    "submit.step.done": ("Hoàn tất", "Done"),
    "submit.identify.heading": ("Điền sẵn tờ khai từ thẻ CCCD", "Pre-fill the form from your ID card"),
    "submit.identify.privacy": (
        "Thông tin chỉ dùng cho hồ sơ này, chỉ được gửi khi quý vị xác nhận nộp, "
        "và bị xoá khỏi máy khi quý vị kết thúc hoặc rời máy.",
        "Your details are used only for this dossier, sent only when you confirm, "
        "and erased from the kiosk when you finish or leave.",
    ),
    "submit.identify.agree": ("Đồng ý, quét thẻ CCCD", "I agree, scan my ID card"),
    "submit.identify.manual": ("Tự nhập, không dùng thẻ", "Type it myself, without the card"),
    "submit.form.hint": (
        "Kiểm tra từng ô. Chạm vào ô cần sửa rồi gõ bằng bàn phím trên màn hình. Ô có dấu * là bắt buộc.",
        "Check each box. Touch a box to correct it and type on the on-screen keyboard. "
        "Boxes marked * are required.",
    ),
    "submit.form.fix": ("Vui lòng sửa các ô được đánh dấu đỏ.", "Please correct the boxes marked in red."),
    "submit.required": ("bắt buộc", "required"),
    "submit.from_card": ("(từ thẻ CCCD)", "(from your ID card)"),
    "submit.next": ("Tiếp tục", "Continue"),
    "submit.back": ("Quay lại", "Back"),
    "submit.docs.hint": (
        "Đặt từng trang giấy tờ lên khay chụp, ngửa mặt có chữ lên, rồi bấm “Chụp trang”.",
        "Place each page face up on the camera tray, then press “Photograph page”.",
    ),
    "submit.docs.pages": ("Cần {min} đến {max} trang", "{min} to {max} page(s) needed"),
    "submit.docs.optional": ("Không bắt buộc; tối đa {max} trang", "Optional; up to {max} page(s)"),
    "submit.docs.page": ("Trang {n}", "Page {n}"),
    "submit.docs.capture": ("Chụp trang", "Photograph page"),
    "submit.docs.busy": ("Đang chụp, giữ yên trang giấy…", "Taking the photo, keep the page still…"),
    "submit.docs.retake": ("Chụp lại", "Retake"),
    "submit.docs.up": ("Lên", "Up"),
    "submit.docs.down": ("Xuống", "Down"),
    "submit.docs.delete": ("Xoá trang", "Delete page"),
    "submit.review.hint": (
        "Kiểm tra lại toàn bộ thông tin và các trang giấy tờ trước khi nộp.",
        "Check every detail and every page before you submit.",
    ),
    "submit.review.edit_form": ("Sửa tờ khai", "Edit the form"),
    "submit.review.edit_docs": ("Sửa giấy tờ", "Edit the documents"),
    "submit.consent.heading": ("Xác nhận nộp hồ sơ", "Confirm your submission"),
    "submit.consent.text1": (
        "Tôi cam đoan những thông tin đã khai là đúng sự thật và đồng ý gửi tờ khai cùng ảnh giấy tờ "
        "tới {agency} qua hệ thống dịch vụ công của thành phố.",
        "I declare that the details given are true and agree to send the form and the document photos "
        "to {agency} through the city's public service system.",
    ),
    "submit.consent.text2": (
        "Sau khi gửi, máy xoá thông tin và ảnh của quý vị; chỉ giữ mã hồ sơ để in giấy biên nhận.",
        "Once sent, the kiosk erases your details and photos; "
        "it keeps only the dossier code for the receipt.",
    ),
    "submit.consent.fee": (
        "Lệ phí: {fee}, thanh toán bằng mã VietQR sau khi nộp.",
        "Fee: {fee}, paid with a VietQR code after submitting.",
    ),
    "submit.consent.agree": ("Tôi đồng ý và nộp hồ sơ", "I agree, submit the dossier"),
    "submit.sending": ("Đang gửi hồ sơ, vui lòng chờ…", "Sending your dossier, please wait…"),
    "submit.unavailable": (
        "Chưa gửi được hồ sơ: hệ thống của thành phố đang không trả lời. Hồ sơ chưa được nộp và "
        "thông tin vẫn còn trên màn hình. Vui lòng bấm nộp lại sau ít phút hoặc hỏi cán bộ tiếp nhận.",
        "Your dossier could not be sent: the city's system is not answering. Nothing was submitted and "
        "your details are still here. Please press submit again in a few minutes or ask at the desk.",
    ),
    "submit.refused": (
        "Hệ thống của thành phố không nhận hồ sơ này. Vui lòng hỏi cán bộ tiếp nhận để được hướng dẫn.",
        "The city's system did not accept this dossier. Please ask at the reception desk for help.",
    ),
    "submit.done.ok": ("Đã nộp hồ sơ thành công.", "Your dossier has been submitted."),
    "submit.done.keep": (
        "Hãy giữ mã này hoặc in giấy biên nhận để tra cứu hồ sơ.",
        "Keep this code or print the receipt to track your dossier.",
    ),
    "submit.done.print": ("In giấy biên nhận", "Print receipt"),
    "submit.done.end": ("Kết thúc và xoá thông tin", "Finish and erase my details"),
    "submit.pay.heading": ("Thanh toán lệ phí", "Pay the fee"),
    "submit.pay.text": (
        "Mở ứng dụng ngân hàng bất kỳ, quét mã VietQR dưới đây để chuyển {fee}.",
        "Open any banking app and scan the VietQR code below to transfer {fee}.",
    ),
    "submit.pay.amount": ("Số tiền", "Amount"),
    "submit.pay.reference": ("Nội dung chuyển khoản", "Transfer reference"),
    "submit.pay.waiting": ("Đang chờ xác nhận thanh toán…", "Waiting for the payment to be confirmed…"),
    "submit.pay.paid": ("Đã thanh toán {fee}", "Paid {fee}"),
    "submit.pay.none": ("Thủ tục này không thu lệ phí.", "This procedure has no fee."),
    # Spoken guidance (read aloud by the "Nghe" button; guidance only, never personal data)
    "guide.listen": ("Nghe hướng dẫn", "Listen"),
    "guide.auto": ("Tự động đọc", "Read aloud automatically"),
    "guide.home": (
        "Xin chào. Chạm vào một ô để bắt đầu: thủ tục hành chính và nộp hồ sơ, tra cứu hồ sơ, "
        "định danh bằng thẻ căn cước, đánh giá dịch vụ, hoặc xem thông báo.",
        "Hello. Touch a tile to start: procedures and submitting a dossier, tracking a dossier, "
        "identifying with your ID card, rating the service, or announcements.",
    ),
    "guide.procedures": (
        "Gõ tên thủ tục bằng bàn phím trên màn hình, có dấu hoặc không dấu, rồi chạm vào thủ tục cần xem. "
        "Thủ tục có nhãn màu xanh có thể nộp hồ sơ ngay tại máy này.",
        "Type a procedure name on the on-screen keyboard, then touch the procedure you need. "
        "Procedures with a green label can be submitted at this kiosk.",
    ),
    "guide.procedure": (
        "Đây là giấy tờ cần chuẩn bị, lệ phí và thời gian giải quyết. "
        "Nếu có nút Nộp hồ sơ tại máy này, quý vị có thể nộp ngay.",
        "Here are the documents to bring, the fee and the processing time. "
        "If there is a Submit at this kiosk button, you can submit now.",
    ),
    "guide.lookup": (
        "Đưa mã QR trên giấy biên nhận vào máy quét, hoặc gõ mã hồ sơ rồi bấm Tra cứu.",
        "Hold the QR code on your receipt under the scanner, or type the dossier code and press Look up.",
    ),
    "guide.identity": (
        "Đọc nội dung, bấm Tôi đồng ý, rồi đưa mặt sau thẻ căn cước có mã QR vào máy quét.",
        "Read the text, press I agree, then hold the back of your ID card (QR code) under the scanner.",
    ),
    "guide.rating": (
        "Chạm vào một khuôn mặt để cho biết mức hài lòng, rồi bấm Gửi đánh giá.",
        "Touch a face to say how satisfied you are, then press Send rating.",
    ),
    "guide.submit.identify": (
        "Bước một: định danh. Nếu quý vị đồng ý, bấm nút màu xanh rồi đưa mặt sau thẻ căn cước, "
        "có mã QR, vào máy quét. Nếu không muốn dùng thẻ, bấm nút tự nhập.",
        "Step one: identify. If you agree, press the blue button, then hold the back of your ID card, "
        "with the QR code, under the scanner. To type your details yourself, press the other button.",
    ),
    "guide.submit.form": (
        "Bước hai: tờ khai. Kiểm tra từng ô. Chạm vào ô cần sửa rồi gõ bằng bàn phím phía dưới. "
        "Ô có dấu sao là bắt buộc. Xong thì bấm Tiếp tục.",
        "Step two: the form. Check each box. Touch a box to correct it and type on the keyboard below. "
        "Boxes with a star are required. Then press Continue.",
    ),
    "guide.submit.documents": (
        "Bước ba: giấy tờ. Đặt từng trang lên khay chụp, mặt có chữ hướng lên, rồi bấm Chụp trang. "
        "Nếu ảnh bị mờ, máy sẽ nhắc chụp lại.",
        "Step three: documents. Place each page face up on the tray and press Photograph page. "
        "If a photo is blurred, the kiosk asks you to take it again.",
    ),
    "guide.submit.review": (
        "Bước bốn: kiểm tra lại toàn bộ thông tin và các trang giấy tờ. Nếu cần sửa, bấm nút sửa.",
        "Step four: check every detail and every page. To change something, press an edit button.",
    ),
    "guide.submit.consent": (
        "Bước năm: đọc lời cam đoan. Nếu đồng ý, bấm nút Tôi đồng ý và nộp hồ sơ.",
        "Step five: read the declaration. If you agree, press the button to submit the dossier.",
    ),
    "guide.submit.done": (
        "Đã nộp hồ sơ. Hãy in giấy biên nhận để giữ mã hồ sơ. Nếu có lệ phí, quét mã VietQR bằng "
        "ứng dụng ngân hàng. Xong thì bấm Kết thúc để xoá thông tin.",
        "Your dossier is submitted. Print the receipt to keep the dossier code. If there is a fee, "
        "scan the VietQR code with your banking app. Then press Finish to erase your details.",
    ),
    # Announcements / idle
    "news.title": ("Thông báo", "Announcements"),
    "news.touch": ("Chạm vào màn hình để bắt đầu", "Touch the screen to start"),
    "news.none": ("Hiện chưa có thông báo mới.", "There are no announcements right now."),
    "idle.title": ("Quý vị còn sử dụng máy không?", "Are you still there?"),
    "idle.text": (
        "Để bảo vệ thông tin, màn hình sẽ tự xoá sau {n} giây.",
        "To protect your data the screen will be cleared in {n} seconds.",
    ),
    "idle.continue": ("Tiếp tục / Continue", "Continue / Tiếp tục"),
}

RATING_REASONS: tuple[str, ...] = ("fast", "friendly", "clear", "wait", "complex", "kiosk")
"""Reason chips offered on the rating screen (codes sent in the ``kiosk.rating`` event)."""


def normalise_lang(value: object) -> Lang:
    """``"en"`` for English, Vietnamese for anything else (the kiosk's first language)."""
    return "en" if value == "en" else "vi"


def other_lang(lang: Lang) -> Lang:
    return "vi" if lang == "en" else "en"


def text(lang: Lang, key: str, **fmt: object) -> str:
    """The string ``key`` in ``lang``; ``KeyError`` names a missing key."""
    vi, en = STRINGS[key]
    value = en if lang == "en" else vi
    return value.format(**fmt) if fmt else value


def translator(lang: Lang) -> Callable[..., str]:
    def t(key: str, **fmt: object) -> str:
        return text(lang, key, **fmt)

    return t


def pick(lang: Lang, value: Mapping[str, str] | str | None) -> str:
    """Choose the ``lang`` text of a ``{"vi", "en"}`` content field (falling back to Vietnamese)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return value.get(lang) or value.get("vi") or value.get("en") or ""
